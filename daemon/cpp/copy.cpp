// dst.copy_(src, non_blocking=true), which tch does not bind (its copy_ waits for the device
// after a copy from the host): a host-to-device copy from pinned memory into a tensor that stays
// where it is (a CUDA graph reads it by address), queued without a wait. Returns null on
// success, else the C++ exception's message (guard.h).
#include <ATen/ATen.h>

#include "guard.h"

extern "C" const char* ns_copy_nonblocking(const void* dst, const void* src) {
    return ns::guarded([&] {
        static_cast<const at::Tensor*>(dst)->copy_(*static_cast<const at::Tensor*>(src), /*non_blocking=*/true);
    });
}
