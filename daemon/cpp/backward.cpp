// torch.autograd.backward(roots, grads): backpropagation from several tensors at once, each
// with its own output gradient, which tch does not bind (its backward starts from one scalar,
// its run_backward from ones). The objective writes ∂L/∂F out for every tapped activation F, so
// autograd only has to carry those through the network: no surrogate scalar and no operators
// to build one. Returns null on success, else the C++ exception's message (guard.h).
#include <torch/csrc/autograd/autograd.h>

#include <vector>

#include "guard.h"

extern "C" const char* ns_backward(const void* const* roots, const void* const* grads, int n) {
    return ns::guarded([&] {
        std::vector<at::Tensor> r, g;
        r.reserve(n);
        g.reserve(n);
        for (int i = 0; i < n; ++i) {
            r.push_back(*static_cast<const at::Tensor*>(roots[i]));
            g.push_back(*static_cast<const at::Tensor*>(grads[i]));
        }
        torch::autograd::backward(r, g, /*retain_graph=*/false, /*create_graph=*/false);
    });
}
