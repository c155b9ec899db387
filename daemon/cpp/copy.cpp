// dst.copy_(src, non_blocking=true), which tch does not bind (its copy_ waits for the device
// after a copy from the host): a host-to-device copy from pinned memory into a tensor that stays
// where it is (a CUDA graph reads it by address), queued without a wait. Catches C++ exceptions
// and returns their message (null on success), kept per thread until the next call.
#include <ATen/ATen.h>

#include <exception>
#include <string>

namespace {
thread_local std::string last_error;
}

extern "C" const char* ns_copy_nonblocking(const void* dst, const void* src) {
    try {
        static_cast<const at::Tensor*>(dst)->copy_(*static_cast<const at::Tensor*>(src), /*non_blocking=*/true);
        return nullptr;
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown C++ exception";
    }
    return last_error.c_str();
}
