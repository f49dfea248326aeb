// Portability macros shared by the CPU twins (g++) and the CUDA kernels (nvcc).
#pragma once

#if defined(__CUDACC__)
#define VIDCORE_HD __host__ __device__ __forceinline__
#else
#define VIDCORE_HD inline
#endif
