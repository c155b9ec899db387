// What every shim's entry point does with a C++ exception: it never crosses into Rust; its
// message is kept per thread (until the next failure) and handed back as a C string.
#pragma once

#include <exception>
#include <string>

namespace ns {

inline thread_local std::string last_error;

// Runs f; null on success, else the exception's message.
template <class F>
const char* guarded(F f) {
    try {
        f();
        return nullptr;
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown C++ exception";
    }
    return last_error.c_str();
}

}  // namespace ns
