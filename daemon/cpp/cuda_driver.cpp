// What the engine does through the CUDA driver API itself, beside libtorch: copies from pinned
// host memory queued without libtorch's copy machinery (ns_copy_to_device), and kernels of its
// own compiled at run time with NVRTC (the build machine has no CUDA compiler; libtorch's wheels
// bring libnvrtc): the products of a few hundred rows with a few columns over a long dimension —
// the L-BFGS history's [r, n] rows times a trial's s, y and g (ns_products).
//
// Why: cuBLAS runs [202, n] × [n, 3] on few blocks, and as a batch of products over chunks of n
// it still reads the rows at 1.7 TB/s on an H200, where the product back over the same rows (a
// matrix–vector product of the other orientation) reaches 3.5 TB/s (docs/benchmarks.md). Here
// every block takes chunks of n for 32 rows, keeps the columns' chunk in shared memory and reads
// each row element once; a second kernel sums the blocks' partial products (in double, in a
// fixed order: the result does not depend on timing).
//
// libnvrtc and libcuda are opened with dlopen (the binary links neither); the kernels go into
// the device's primary context (libtorch's). Launches are on libtorch's current stream, so they
// are captured into a CUDA graph like any operator. Entry points return null on success, else
// the C++ exception's message (guard.h).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>
#include <dlfcn.h>
#include <nvrtc.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "guard.h"

namespace {

// Rows per block (8 warps of 4 rows), columns' coordinates per chunk.
constexpr int kRowsPerBlock = 32;
constexpr int kChunk = 1024;
constexpr int kThreads = 256;
constexpr int kMaxColumns = 4;

const char* kSource = R"CUDA(
// VEC: 16-byte loads (every row's start and n a multiple of 4 floats)
template <int K, bool VEC>
__device__ void products(const float* __restrict__ held, long long held_stride, int rows,
                         const float* __restrict__ cols, long long col_stride, long long n,
                         float* __restrict__ partial) {
    __shared__ float shared[K * 1024];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = blockIdx.y * 32 + warp * 4;
    const int mine = min(4, rows - r0);
    float acc[4][K];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < K; ++c) acc[j][c] = 0.0f;
    for (long long start = (long long)blockIdx.x * 1024; start < n; start += (long long)gridDim.x * 1024) {
        const int len = (int)min(1024LL, n - start);
        __syncthreads();
        for (int i = threadIdx.x; i < len; i += blockDim.x)
#pragma unroll
            for (int c = 0; c < K; ++c) shared[c * 1024 + i] = cols[c * col_stride + start + i];
        __syncthreads();
        if (mine <= 0) continue;
        const float* h = held + (long long)r0 * held_stride + start;
        if (VEC) {
            for (int i = lane * 4; i < len; i += 128) {
                float4 v[K];
#pragma unroll
                for (int c = 0; c < K; ++c) v[c] = *reinterpret_cast<const float4*>(shared + c * 1024 + i);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (j < mine) {
                        const float4 x = *reinterpret_cast<const float4*>(h + j * held_stride + i);
#pragma unroll
                        for (int c = 0; c < K; ++c)
                            acc[j][c] += x.x * v[c].x + x.y * v[c].y + x.z * v[c].z + x.w * v[c].w;
                    }
                }
            }
            continue;
        }
#pragma unroll 2
        for (int i = lane; i < len; i += 32) {
            float v[K];
#pragma unroll
            for (int c = 0; c < K; ++c) v[c] = shared[c * 1024 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (j < mine) {
                    const float x = h[j * held_stride + i];
#pragma unroll
                    for (int c = 0; c < K; ++c) acc[j][c] += x * v[c];
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < K; ++c)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[j][c] += __shfl_xor_sync(0xffffffffu, acc[j][c], o);
    if (lane == 0)
        for (int j = 0; j < mine; ++j)
#pragma unroll
            for (int c = 0; c < K; ++c) partial[((long long)blockIdx.x * rows + r0 + j) * K + c] = acc[j][c];
}

#define NS_PRODUCTS(K)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) ns_products##K(                           \
        const float* held, long long held_stride, int rows, const float* cols,                  \
        long long col_stride, long long n, float* partial) {                                    \
        products<K, false>(held, held_stride, rows, cols, col_stride, n, partial);              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) ns_products##K##v(                        \
        const float* held, long long held_stride, int rows, const float* cols,                  \
        long long col_stride, long long n, float* partial) {                                    \
        products<K, true>(held, held_stride, rows, cols, col_stride, n, partial);               \
    }
NS_PRODUCTS(1)
NS_PRODUCTS(2)
NS_PRODUCTS(3)
NS_PRODUCTS(4)

// out[o] = Σ_p partial[p·outs + o], one block of 128 threads per output, in double.
extern "C" __global__ void __launch_bounds__(128) ns_products_sum(const float* __restrict__ partial, int parts,
                                                                  int outs, float* __restrict__ out) {
    __shared__ double warps[4];
    const int o = blockIdx.x;
    double s = 0.0;
    for (int p = threadIdx.x; p < parts; p += 128) s += (double)partial[(long long)p * outs + o];
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) out[o] = (float)(warps[0] + warps[1] + warps[2] + warps[3]);
}
)CUDA";

template <class T>
void bind(void* lib, const char* name, T& fn) {
    fn = reinterpret_cast<T>(dlsym(lib, name));
    if (fn == nullptr) throw std::runtime_error(std::string("no ") + name + " in the CUDA libraries opened");
}

// The driver's entry points used here.
struct Driver {
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
    CUresult (*cuCtxGetCurrent)(CUcontext*);
    CUresult (*cuModuleLoadData)(CUmodule*, const void*);
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               CUstream, void**, void**);
    CUresult (*cuGetErrorString)(CUresult, const char**);
    CUresult (*cuDeviceGet)(CUdevice*, int);
    CUresult (*cuDeviceGetAttribute)(int*, CUdevice_attribute, CUdevice);

    void check(CUresult r, const char* what) const {
        if (r == CUDA_SUCCESS) return;
        const char* s = nullptr;
        cuGetErrorString(r, &s);
        throw std::runtime_error(std::string(what) + ": " + (s ? s : "CUDA driver error"));
    }
};

// NVRTC's entry points used here.
struct Rtc {
    nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                                      const char* const*);
    nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char* const*);
    nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t*);
    nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char*);
    nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t*);
    nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char*);
    nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram*);
    const char* (*nvrtcGetErrorString)(nvrtcResult);

    void check(nvrtcResult r, const char* what) const {
        if (r != NVRTC_SUCCESS) throw std::runtime_error(std::string(what) + ": " + nvrtcGetErrorString(r));
    }
};

// The folder of libtorch's CUDA libraries (that of libc10_cuda.so).
std::string torch_cuda_dir() {
    Dl_info info{};
    auto* current = static_cast<c10::cuda::CUDAStream (*)(c10::DeviceIndex)>(&c10::cuda::getCurrentCUDAStream);
    if (dladdr(reinterpret_cast<void*>(current), &info) == 0 || !info.dli_fname)
        return "";
    std::string path = info.dli_fname;
    auto slash = path.rfind('/');
    return slash == std::string::npos ? "" : path.substr(0, slash);
}

// libnvrtc: already loaded, on the library path, or in the pip wheels beside torch.
void* open_nvrtc() {
    const std::string major = std::to_string(CUDA_VERSION / 1000);
    std::vector<std::string> names = {"libnvrtc.so." + major, "libnvrtc.so"};
    const std::string torch = torch_cuda_dir();
    if (!torch.empty()) {
        names.push_back(torch + "/../../nvidia/cu" + major + "/lib/libnvrtc.so." + major);
        names.push_back(torch + "/../../nvidia/cuda_nvrtc/lib/libnvrtc.so." + major);
        names.push_back(torch + "/libnvrtc.so." + major);
    }
    for (const auto& name : names) {
        void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
        if (lib == nullptr) continue;
        // NVRTC opens its builtins by name when it compiles: load them from its own folder first
        // (the wheels' folder is on no search path)
        using Version = nvrtcResult (*)(int*, int*);
        auto version = reinterpret_cast<Version>(dlsym(lib, "nvrtcVersion"));
        Dl_info info{};
        int v_major = 0, v_minor = 0;
        if (version != nullptr && version(&v_major, &v_minor) == NVRTC_SUCCESS &&
            dladdr(reinterpret_cast<void*>(version), &info) != 0 && info.dli_fname != nullptr) {
            std::string path = info.dli_fname;
            const auto slash = path.rfind('/');
            if (slash != std::string::npos) {
                const std::string builtins = path.substr(0, slash) + "/libnvrtc-builtins.so." +
                                             std::to_string(v_major) + "." + std::to_string(v_minor);
                dlopen(builtins.c_str(), RTLD_NOW | RTLD_GLOBAL);
            }
        }
        return lib;
    }
    throw std::runtime_error("libnvrtc.so." + major + " not found (it comes with torch's CUDA wheels)");
}

// The driver's entry points (libcuda comes with the driver; an exception where it is missing).
const Driver& driver() {
    static const Driver d = [] {
        Driver d{};
        void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (cuda == nullptr) throw std::runtime_error("libcuda.so.1 not found");
        bind(cuda, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync);
        bind(cuda, "cuCtxGetCurrent", d.cuCtxGetCurrent);
        bind(cuda, "cuModuleLoadData", d.cuModuleLoadData);
        bind(cuda, "cuModuleGetFunction", d.cuModuleGetFunction);
        bind(cuda, "cuLaunchKernel", d.cuLaunchKernel);
        bind(cuda, "cuGetErrorString", d.cuGetErrorString);
        bind(cuda, "cuDeviceGet", d.cuDeviceGet);
        bind(cuda, "cuDeviceGetAttribute", d.cuDeviceGetAttribute);
        return d;
    }();
    return d;
}

// NVRTC's entry points (it needs no device: the kernels compile on any machine).
const Rtc& rtc() {
    static const Rtc r = [] {
        Rtc r{};
        void* lib = open_nvrtc();
        bind(lib, "nvrtcCreateProgram", r.nvrtcCreateProgram);
        bind(lib, "nvrtcCompileProgram", r.nvrtcCompileProgram);
        bind(lib, "nvrtcGetProgramLogSize", r.nvrtcGetProgramLogSize);
        bind(lib, "nvrtcGetProgramLog", r.nvrtcGetProgramLog);
        bind(lib, "nvrtcGetCUBINSize", r.nvrtcGetCUBINSize);
        bind(lib, "nvrtcGetCUBIN", r.nvrtcGetCUBIN);
        bind(lib, "nvrtcDestroyProgram", r.nvrtcDestroyProgram);
        bind(lib, "nvrtcGetErrorString", r.nvrtcGetErrorString);
        return r;
    }();
    return r;
}

// The kernels' source compiled for compute capability major.minor: the CUBIN.
std::vector<char> compile(int major, int minor) {
    const Rtc& r = rtc();
    const std::string arch = "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor);
    nvrtcProgram program = nullptr;
    r.check(r.nvrtcCreateProgram(&program, kSource, "ns_products.cu", 0, nullptr, nullptr), "nvrtcCreateProgram");
    const char* options[] = {arch.c_str(), "--std=c++17", "-default-device"};
    const nvrtcResult compiled = r.nvrtcCompileProgram(program, 3, options);
    if (compiled != NVRTC_SUCCESS) {
        size_t size = 0;
        r.nvrtcGetProgramLogSize(program, &size);
        std::string log(size, '\0');
        r.nvrtcGetProgramLog(program, log.data());
        r.nvrtcDestroyProgram(&program);
        throw std::runtime_error("NVRTC could not compile the history's products (" + arch + "): " + log);
    }
    size_t size = 0;
    r.check(r.nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
    std::vector<char> cubin(size);
    r.check(r.nvrtcGetCUBIN(program, cubin.data()), "nvrtcGetCUBIN");
    r.nvrtcDestroyProgram(&program);
    return cubin;
}

// The kernels as loaded into one device's context.
struct Kernels {
    std::array<CUfunction, kMaxColumns> products{};
    std::array<CUfunction, kMaxColumns> vectorized{};
    CUfunction sum{};
};

// Compiles the source for the device's architecture and loads it (once per device).
const Kernels& kernels(int device) {
    static std::mutex lock;
    static std::map<int, Kernels> loaded;
    std::lock_guard<std::mutex> hold(lock);
    if (auto it = loaded.find(device); it != loaded.end()) return it->second;
    const Driver& d = driver();
    c10::DeviceGuard guard(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
    CUcontext context = nullptr;
    d.check(d.cuCtxGetCurrent(&context), "cuCtxGetCurrent");
    if (context == nullptr) {
        // the runtime makes the primary context current with its first call on this thread
        at::zeros({1}, at::TensorOptions().device(at::kCUDA, device));
    }
    CUdevice dev = 0;
    int major = 0, minor = 0;
    d.check(d.cuDeviceGet(&dev, device), "cuDeviceGet");
    d.check(d.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
    d.check(d.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
    const std::vector<char> cubin = compile(major, minor);
    CUmodule module = nullptr;
    d.check(d.cuModuleLoadData(&module, cubin.data()), "cuModuleLoadData");
    Kernels k;
    for (int c = 1; c <= kMaxColumns; ++c) {
        const std::string name = "ns_products" + std::to_string(c);
        d.check(d.cuModuleGetFunction(&k.products[c - 1], module, name.c_str()), "cuModuleGetFunction");
        d.check(d.cuModuleGetFunction(&k.vectorized[c - 1], module, (name + "v").c_str()), "cuModuleGetFunction");
    }
    d.check(d.cuModuleGetFunction(&k.sum, module, "ns_products_sum"), "cuModuleGetFunction");
    return loaded.emplace(device, k).first->second;
}

void check_operands(const at::Tensor& held, const at::Tensor& cols, const at::Tensor& out) {
    TORCH_CHECK(held.is_cuda() && cols.is_cuda() && out.is_cuda(), "products: CUDA tensors only");
    TORCH_CHECK(held.scalar_type() == at::kFloat && cols.scalar_type() == at::kFloat &&
                    out.scalar_type() == at::kFloat,
                "products: f32 only");
    TORCH_CHECK(held.dim() == 2 && cols.dim() == 2 && held.size(1) == cols.size(1), "products: [r, n] and [k, n]");
    TORCH_CHECK(held.stride(1) == 1 && cols.stride(1) == 1, "products: rows must be contiguous");
    TORCH_CHECK(cols.size(0) >= 1 && cols.size(0) <= kMaxColumns, "products: 1 to 4 columns");
    TORCH_CHECK(out.is_contiguous() && out.numel() == held.size(0) * cols.size(0), "products: out is [r, k]");
}

}  // namespace

extern "C" {

// Queues a copy of `bytes` from host memory at `src` (pinned: the copy does not wait) to the
// device memory at `dst` on `device`'s current stream: what `copy_(…, non_blocking)` does, without
// the dispatcher, the tensor iterator and the pinned block's event (the caller keeps `src` until
// a later wait on the stream).
const char* ns_copy_to_device(void* dst, const void* src, size_t bytes, int device) {
    return ns::guarded([&] {
        const Driver& d = driver();
        CUstream stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
        d.check(d.cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), src, bytes, stream), "cuMemcpyHtoDAsync");
    });
}

// Compiles the kernels for compute capability major.minor (no device needed); `bytes` gets the
// CUBIN's size.
const char* ns_products_compile(int major, int minor, size_t* bytes) {
    return ns::guarded([&] { *bytes = compile(major, minor).size(); });
}

// Compiles and loads the kernels for `device` (NVRTC takes a few hundred milliseconds): call it
// outside a graph capture, before the first product.
const char* ns_products_load(int device) {
    return ns::guarded([&] { kernels(device); });
}

// out ([r, k], f32) = held ([r, n], rows contiguous) times cols ([k, n], rows contiguous)ᵀ, on the
// current stream. The kernels must be loaded (ns_products_load).
const char* ns_products(const void* held_p, const void* cols_p, const void* out_p) {
    return ns::guarded([&] {
        const auto& held = *static_cast<const at::Tensor*>(held_p);
        const auto& cols = *static_cast<const at::Tensor*>(cols_p);
        const auto& out = *static_cast<const at::Tensor*>(out_p);
        check_operands(held, cols, out);
        int rows = static_cast<int>(held.size(0));
        const int k = static_cast<int>(cols.size(0));
        long long n = held.size(1);
        if (rows == 0) return;
        const int device = held.get_device();
        const Kernels& kern = kernels(device);
        const Driver& d = driver();
        c10::DeviceGuard guard(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
        const unsigned row_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
        const long long chunks = std::max(1LL, (n + kChunk - 1) / kChunk);
        const unsigned parts = static_cast<unsigned>(std::min<long long>(chunks, std::max(1u, 2048u / row_blocks)));
        at::Tensor partial = at::empty({static_cast<long long>(parts) * rows * k}, held.options());
        const float* held_data = held.data_ptr<float>();
        const float* cols_data = cols.data_ptr<float>();
        float* partial_data = partial.data_ptr<float>();
        float* out_data = out.data_ptr<float>();
        long long held_stride = held.stride(0), col_stride = cols.stride(0);
        void* args[] = {&held_data, &held_stride, &rows, &cols_data, &col_stride, &n, &partial_data};
        CUstream stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
        const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
        const bool vec = n % 4 == 0 && held_stride % 4 == 0 && col_stride % 4 == 0 && aligned(held_data) &&
                         aligned(cols_data);
        d.check(d.cuLaunchKernel((vec ? kern.vectorized : kern.products)[k - 1], parts, row_blocks, 1, kThreads, 1, 1, 0, stream, args, nullptr),
                 "launching the history's products");
        int parts_i = static_cast<int>(parts), outs = rows * k;
        void* sum_args[] = {&partial_data, &parts_i, &outs, &out_data};
        d.check(d.cuLaunchKernel(kern.sum, outs, 1, 1, 128, 1, 1, 0, stream, sum_args, nullptr),
                 "launching the products' sum");
    });
}

}  // extern "C"
