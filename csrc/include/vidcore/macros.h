// Portability macros shared by the CPU twins (g++) and the CUDA kernels (nvcc).
#pragma once

#if defined(__CUDACC__)
#define VIDCORE_HD __host__ __device__ __forceinline__
#else
#define VIDCORE_HD inline
#endif

// VIDCORE_UNROLL before a loop with compile-time bounds: nvcc unrolls it fully (so per-thread
// arrays it indexes stay in registers); g++ leaves it to its own judgement.
#if defined(__CUDACC__)
#define VIDCORE_UNROLL _Pragma("unroll")
#else
#define VIDCORE_UNROLL
#endif

// VIDCORE_KERNEL_ASSERT(cond): a device-side assert that stays on under NDEBUG, like ATen's
// CUDA_KERNEL_ASSERT (the .cu files are torch-free, so they cannot include c10). A failed assert
// stops the kernel and surfaces as cudaErrorAssert at the next synchronising call; no host sync.
#if defined(__CUDACC__)
extern "C" {
// Declared exactly as glibc does, so it agrees with <assert.h> included with or without NDEBUG.
#if defined(__CUDA_ARCH__)
__host__ __device__
#endif
void __assert_fail(const char* assertion, const char* file, unsigned int line,
                   const char* function) noexcept __attribute__((__noreturn__));
}
#if defined(VIDCORE_NO_KERNEL_ASSERT)
// Only for tests/kernels/test_cuda_resources.py, which compiles each kernel without its checks to
// see the hot path's own registers and spills (the __assert_fail call keeps a stack frame).
#define VIDCORE_KERNEL_ASSERT(cond) ((void)0)
#else
#define VIDCORE_KERNEL_ASSERT(cond)                                                 \
  do {                                                                              \
    if (!(cond)) __assert_fail(#cond, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)
#endif
#endif
