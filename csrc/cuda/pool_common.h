// What csrc/cuda/pool.cu (forward) and pool_backward.cu share (CUDA only): conversions, vector packs, the
// block shape, and the device-side checks of the plan contract (vidcore/pool.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "vidcore/macros.h"  // VIDCORE_KERNEL_ASSERT: device-side checks, as ATen's CUDA_KERNEL_ASSERT
#include "vidcore/pool.h"

namespace vidcore {
namespace pool_cuda {

constexpr int kThreads = 256;
constexpr int kMaxLanes = 64;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Plan row j obeys the contract (against row j - 1 for the order).
__device__ __forceinline__ void check_row(const int64_t* plan, int64_t j, int64_t table_size,
                                          int64_t height, int64_t width) {
  const int64_t* row = plan + j * kPoolPlanColumns;
  VIDCORE_KERNEL_ASSERT(pool_plan_row_problem(row, j > 0 ? row - kPoolPlanColumns : nullptr,
                                            table_size, height, width) == kPlanOk);
}

// frame_table[s], checked to name a frame of x.
__device__ __forceinline__ int64_t checked_frame(const int64_t* frame_table, int64_t s,
                                                 int64_t frames) {
  const int64_t frame = frame_table[s];
  VIDCORE_KERNEL_ASSERT(0 <= frame && frame < frames);
  return frame;
}

// Input row of cell k of the row's box (pool_window_row, with the frame checked).
__device__ __forceinline__ int64_t checked_cell(const int64_t* row, const int64_t* frame_table,
                                                int64_t frames, int64_t height, int64_t width,
                                                int64_t k) {
  const auto rows = static_cast<uint32_t>(row[kRowEnd] - row[kRowBegin]);
  const auto cols = static_cast<uint32_t>(row[kColEnd] - row[kColBegin]);
  const auto cell = static_cast<uint32_t>(k), in_frame = cell % (rows * cols);
  const int64_t frame = checked_frame(frame_table, row[kFrameBegin] + cell / (rows * cols),
                                      frames);
  return (frame * height + row[kRowBegin] + in_frame / cols) * width + row[kColBegin] +
         in_frame % cols;
}

// Channels per thread: the widest vector (up to 16 bytes) that divides the channel count and
// keeps both base pointers aligned, so an odd width only narrows the loads it must.
template <typename T>
int vector_width(int64_t channels, const void* a, const void* b) {
  int vec = 16 / int(sizeof(T));
  while (vec > 1 && (channels % vec != 0 || reinterpret_cast<uintptr_t>(a) % (vec * sizeof(T)) ||
                     reinterpret_cast<uintptr_t>(b) % (vec * sizeof(T)))) {
    vec /= 2;
  }
  return vec;
}

// Lanes (threadIdx.x) hold one vector of channels each; the channel packs are split evenly over
// `slices` blocks of at most kMaxLanes lanes, so no lane idles beyond rounding (100 packs: two
// slices of 50, not 64 + 36), and the rest of the kThreads threads form groups (threadIdx.y).
inline dim3 block_shape(int64_t packs, unsigned* slices) {
  *slices = unsigned((packs + kMaxLanes - 1) / kMaxLanes);
  const int lanes = int((packs + *slices - 1) / *slices);
  return dim3(lanes, kThreads / lanes);
}

}  // namespace pool_cuda
}  // namespace vidcore
