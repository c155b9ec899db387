// Counts, per thread, the libtorch operators called from outside libtorch (from Rust) and the
// autograd nodes a backward pass runs, less the calls that only make views or empty tensors
// (a reshape or a dtype conversion counts when it copies):
// what costs CPU time per call (dispatch, and on a GPU at least one kernel launch) whatever the
// tensors' size, so the count makes launch-bound costs visible on a CPU. A global
// RecordFunction callback, added only when asked (ns_ops_enable): it slows every operator a
// little. NEURAL_STYLE_TRACE_OPS=1 prints each counted call.
#include <ATen/record_function.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string_view>

namespace {

thread_local std::uint64_t ops = 0;
// operator calls open on this thread (nested ones are part of the outermost)
thread_local int depth = 0;
// the outermost call is one that may or may not do work (reshape: a view or a copy): it counts
// when it calls an operator that does
thread_local bool undecided = false;
const bool trace = std::getenv("NEURAL_STYLE_TRACE_OPS") != nullptr;

bool metadata_only(std::string_view name) {
    static constexpr std::string_view names[] = {
        "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::as_strided",
        "aten::detach", "aten::detach_", "aten::t", "aten::transpose", "aten::permute", "aten::expand",
        "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::narrow", "aten::alias",
        "aten::_reshape_alias", "aten::resize_", "aten::lift_fresh", "aten::set_", "aten::result_type",
        "aten::_unsafe_view", "aten::unflatten", "aten::split", "aten::chunk", "aten::unbind",
        "aten::requires_grad_", "aten::_has_compatible_shallow_copy_type", "aten::is_same_size",
        "aten::view_as", "aten::expand_as", "aten::flatten",
        "aten::size", "aten::stride", "aten::numel", "aten::resolve_conj",
        "aten::resolve_neg", "aten::conj", "aten::_conj", "aten::_neg_view", "aten::lift", "aten::diagonal",
    };
    for (auto n : names) {
        if (name == n) return true;
    }
    return false;
}

bool view_or_copy(std::string_view name) {
    static constexpr std::string_view names[] = {
        "aten::reshape", "aten::contiguous", "aten::to", "aten::type_as", "aten::flatten",
    };
    for (auto n : names) {
        if (name == n) return true;
    }
    return false;
}

void count(const char* name) {
    ++ops;
    if (trace) std::fprintf(stderr, "op %s\n", name);
}

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
    bool outermost = depth++ == 0;
    if (outermost) {
        undecided = view_or_copy(fn.name());
        if (!undecided && !metadata_only(fn.name())) count(fn.name());
    } else if (undecided && !metadata_only(fn.name()) && !view_or_copy(fn.name())) {
        undecided = false;
        count(fn.name());
    }
    return nullptr;
}

void on_exit(const at::RecordFunction&, at::ObserverContext*) {
    if (depth > 0 && --depth == 0) undecided = false;
}

}  // namespace

extern "C" {

// Starts counting in every thread (idempotent).
void ns_ops_enable() {
    static std::once_flag once;
    std::call_once(once, [] {
        at::addGlobalCallback(at::RecordFunctionCallback(on_enter, on_exit)
                                  .needsInputs(false)
                                  .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    });
}

// Operators that did work on this thread since counting started.
std::uint64_t ns_ops_count() { return ops; }

}  // extern "C"
