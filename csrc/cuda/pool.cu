// Global-local pooling on the GPU: one launch for every view of a batch. A block owns one output
// token (grid-stride over tokens) and a slice of channels. Its threads form lanes x groups: a lane
// holds kVec consecutive channels (one 16-byte load per cell for aligned rows), and the groups
// walk the token's cells k = group, group + groups, ... in parallel, so a temporal mean over
// hundreds of frames is not one thread's serial loop. Group partials meet in shared memory and
// are combined in group order: results are deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "vidcore/pool.h"

namespace vidcore {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kPoolMaxLanes = 64;

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

template <typename T, int kVec>
__global__ void __launch_bounds__(kPoolThreads)
pool_kernel(const T* __restrict__ x,                 // frames x H x W x D
            const int64_t* __restrict__ plan,        // num_tokens x kPoolPlanColumns
            int64_t num_tokens,
            const int64_t* __restrict__ frame_table, // frames named by the plan's slices
            int64_t height, int64_t width, int64_t channels,
            T* __restrict__ out) {                   // num_tokens x D
  extern __shared__ float partial[];                 // [groups][lanes * kVec]
  const int lane = threadIdx.x, group = threadIdx.y;
  const int lanes = blockDim.x, groups = blockDim.y;
  const int64_t d = (int64_t(blockIdx.y) * lanes + lane) * kVec;
  const bool active = d < channels;  // channels % kVec == 0 when kVec > 1
  float* mine = partial + (group * lanes + lane) * kVec;
  for (int64_t j = blockIdx.x; j < num_tokens; j += gridDim.x) {
    const int64_t* row = plan + j * kPoolPlanColumns;
    const bool is_max = row[kPoolMode] == kPoolMax;
    const int64_t cells = pool_window_size(row);
    float acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = is_max ? -INFINITY : 0.0f;
    if (active) {
#pragma unroll 4  // independent loads in flight per thread
      for (int64_t k = group; k < cells; k += groups) {
        const int64_t cell = pool_window_row(row, frame_table, height, width, k);
        const Pack<T, kVec> values =
            *reinterpret_cast<const Pack<T, kVec>*>(x + cell * channels + d);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float v = to_float(values.v[i]);
          acc[i] = is_max ? pool_max(acc[i], v) : acc[i] + v;
        }
      }
    }
    if (groups > 1) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) mine[i] = acc[i];
      __syncthreads();
      if (group == 0) {
        for (int g = 1; g < groups; ++g) {
          const float* theirs = partial + (g * lanes + lane) * kVec;
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            acc[i] = is_max ? pool_max(acc[i], theirs[i]) : acc[i] + theirs[i];
          }
        }
      }
      __syncthreads();  // the next token reuses `partial`
    }
    if (group == 0 && active) {
      Pack<T, kVec> result;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        result.v[i] = from_float<T>(is_max ? acc[i] : acc[i] / float(cells));
      }
      *reinterpret_cast<Pack<T, kVec>*>(out + j * channels + d) = result;
    }
  }
}

// One block per token and 256 channels, one channel per thread; overlapping windows of different
// views meet in grad_x, so contributions are added atomically in fp32.
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
pool_backward_kernel(const T* __restrict__ grad,        // num_tokens x D
                     const T* __restrict__ x,           // frames x H x W x D
                     const int64_t* __restrict__ plan,  // num_tokens x kPoolPlanColumns
                     int64_t num_tokens, const int64_t* __restrict__ frame_table,
                     int64_t height, int64_t width, int64_t channels,
                     float* __restrict__ grad_x) {      // frames x H x W x D, zeroed
  const int64_t d = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= channels) return;
  for (int64_t j = blockIdx.x; j < num_tokens; j += gridDim.x) {
    const int64_t* row = plan + j * kPoolPlanColumns;
    const int64_t cells = pool_window_size(row);
    const float g = to_float(grad[j * channels + d]);
    if (row[kPoolMode] != kPoolMax) {
      for (int64_t k = 0; k < cells; ++k) {
        atomicAdd(grad_x + pool_window_row(row, frame_table, height, width, k) * channels + d,
                  g / float(cells));
      }
      continue;
    }
    float best = -INFINITY;
    int64_t best_row = pool_window_row(row, frame_table, height, width, 0);
    for (int64_t k = 0; k < cells; ++k) {
      const int64_t r = pool_window_row(row, frame_table, height, width, k);
      const float value = to_float(x[r * channels + d]);
      if (pool_max_takes(best, value)) best = value, best_row = r;
    }
    if (cells > 0) atomicAdd(grad_x + best_row * channels + d, g);
  }
}

dim3 pool_grid(int64_t num_tokens, int64_t channels) {
  return dim3(unsigned(std::min<int64_t>(num_tokens, 1 << 30)),
              unsigned((channels + kPoolThreads - 1) / kPoolThreads));
}

template <typename T, int kVec>
void launch_vec(const T* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
                int64_t height, int64_t width, int64_t channels, T* out, cudaStream_t stream) {
  // Lanes cover up to 64 packs of channels (a multiple of a warp); the rest of the block's
  // threads, at least 4 groups, share the cells, so even a 4096-channel temporal mean over
  // 2048 frames is split 4 ways per block (wider rows take more blocks along y instead).
  const int64_t packs = (channels + kVec - 1) / kVec;
  const int lanes = int(std::min<int64_t>((packs + 31) / 32 * 32, kPoolMaxLanes));
  const dim3 block(lanes, kPoolThreads / lanes);
  const dim3 grid(unsigned(std::min<int64_t>(num_tokens, 1 << 30)),
                  unsigned((packs + lanes - 1) / lanes));
  const size_t shared = sizeof(float) * kVec * kPoolThreads;
  pool_kernel<T, kVec><<<grid, block, shared, stream>>>(x, plan, num_tokens, frame_table, height,
                                                       width, channels, out);
}

template <typename T>
void launch(const void* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
            int64_t height, int64_t width, int64_t channels, void* out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* in = static_cast<const T*>(x);
  T* dst = static_cast<T*>(out);
  const bool aligned = channels % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (aligned) {
    launch_vec<T, kVec>(in, plan, num_tokens, frame_table, height, width, channels, dst, stream);
  } else {
    launch_vec<T, 1>(in, plan, num_tokens, frame_table, height, width, channels, dst, stream);
  }
}

template <typename T>
void launch_backward(const void* grad, const void* x, const int64_t* plan, int64_t num_tokens,
                     const int64_t* frame_table, int64_t height, int64_t width,
                     int64_t channels, float* grad_x, cudaStream_t stream) {
  pool_backward_kernel<T><<<pool_grid(num_tokens, channels), kPoolThreads, 0, stream>>>(
      static_cast<const T*>(grad), static_cast<const T*>(x), plan, num_tokens, frame_table,
      height, width, channels, grad_x);
}

}  // namespace

cudaError_t launch_pool_backward(const void* grad, const void* x, int scalar_type,
                                 const int64_t* plan, int64_t num_tokens,
                                 const int64_t* frame_table, int64_t height, int64_t width,
                                 int64_t channels, float* grad_x, cudaStream_t stream) {
  if (num_tokens == 0 || channels == 0) return cudaSuccess;
  switch (scalar_type) {
    case kPoolHalf:
      launch_backward<__half>(grad, x, plan, num_tokens, frame_table, height, width, channels,
                              grad_x, stream);
      break;
    case kPoolBFloat16:
      launch_backward<__nv_bfloat16>(grad, x, plan, num_tokens, frame_table, height, width,
                                     channels, grad_x, stream);
      break;
    case kPoolFloat:
      launch_backward<float>(grad, x, plan, num_tokens, frame_table, height, width, channels,
                             grad_x, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_pool(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
                        const int64_t* frame_table, int64_t height, int64_t width,
                        int64_t channels, void* out, cudaStream_t stream) {
  if (num_tokens == 0 || channels == 0) return cudaSuccess;
  switch (scalar_type) {
    case kPoolHalf:
      launch<__half>(x, plan, num_tokens, frame_table, height, width, channels, out, stream);
      break;
    case kPoolBFloat16:
      launch<__nv_bfloat16>(x, plan, num_tokens, frame_table, height, width, channels, out,
                            stream);
      break;
    case kPoolFloat:
      launch<float>(x, plan, num_tokens, frame_table, height, width, channels, out, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace vidcore
