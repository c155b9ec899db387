// torch.autograd.backward(roots, grads): backpropagation from several tensors at once, each
// with its own output gradient, which tch does not bind (its backward starts from one scalar,
// its run_backward from ones). The objective writes ∂L/∂F out for every tapped activation F, so
// autograd only has to carry those through the network: no surrogate scalar and no operators
// to build one. Catches C++ exceptions and returns their message (null on success); the message
// is kept per thread until the next call.
#include <torch/csrc/autograd/autograd.h>

#include <exception>
#include <string>
#include <vector>

namespace {
thread_local std::string last_error;
}

extern "C" const char* ns_backward(const void* const* roots, const void* const* grads, int n) {
    try {
        std::vector<at::Tensor> r, g;
        r.reserve(n);
        g.reserve(n);
        for (int i = 0; i < n; ++i) {
            r.push_back(*static_cast<const at::Tensor*>(roots[i]));
            g.push_back(*static_cast<const at::Tensor*>(grads[i]));
        }
        torch::autograd::backward(r, g, /*retain_graph=*/false, /*create_graph=*/false);
        return nullptr;
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown C++ exception";
    }
    return last_error.c_str();
}
