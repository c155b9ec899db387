// A small C ABI over libtorch's CUDA graphs (at::cuda::CUDAGraph), which tch does not bind:
// capture one evaluation (forward, loss, backward) on a side stream, then replay it with one
// launch. Every entry point catches C++ exceptions and returns nonzero; the message is kept per
// thread (ns_graph_error, guard.h). Compiled by daemon/build.rs only where libtorch has CUDA.
#include <c10/core/Event.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "guard.h"

namespace {

struct Graph {
    at::cuda::CUDAGraph graph;
    c10::cuda::CUDAStream side;
    std::optional<c10::StreamGuard> guard;
    explicit Graph(int device) : side(c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device))) {}
};

// 0 on success, else 1 with the message kept for ns_graph_error
template <class F>
int guarded(F f) {
    return ns::guarded(f) == nullptr ? 0 : 1;
}

// `to` waits for the work queued so far on `from`
void order(c10::cuda::CUDAStream from, c10::cuda::CUDAStream to) {
    c10::Event event(c10::DeviceType::CUDA);
    event.record(from.unwrap());
    event.block(to.unwrap());
}

}  // namespace

extern "C" {

const char* ns_graph_error() { return ns::last_error.c_str(); }

int ns_graph_new(int device, void** out) {
    return guarded([&] { *out = new Graph(device); });
}

// Makes the graph's side stream current on this thread, after the work queued on the current one.
int ns_graph_enter(void* p) {
    return guarded([&] {
        auto* g = static_cast<Graph*>(p);
        order(c10::cuda::getCurrentCUDAStream(g->side.device_index()), g->side);
        g->guard.emplace(g->side.unwrap());
    });
}

// Back to the previous stream, which then waits for the side stream's work.
int ns_graph_exit(void* p) {
    return guarded([&] {
        auto* g = static_cast<Graph*>(p);
        g->guard.reset();
        order(g->side, c10::cuda::getCurrentCUDAStream(g->side.device_index()));
    });
}

// Begins capturing on the side stream; with `pool` (a captured graph, or null) into that graph's
// memory pool: graphs that are never replayed at the same time may share their intermediates.
int ns_graph_capture_begin(void* p, void* pool) {
    return guarded([&] {
        auto* g = static_cast<Graph*>(p);
        if (pool != nullptr) {
            g->graph.capture_begin(static_cast<Graph*>(pool)->graph.pool());
        } else {
            g->graph.capture_begin();
        }
    });
}

int ns_graph_capture_end(void* p) {
    return guarded([&] { static_cast<Graph*>(p)->graph.capture_end(); });
}

// Replays the captured work on the current stream.
int ns_graph_replay(void* p) {
    return guarded([&] { static_cast<Graph*>(p)->graph.replay(); });
}

void ns_graph_free(void* p) {
    guarded([&] { delete static_cast<Graph*>(p); });
}

}  // extern "C"
