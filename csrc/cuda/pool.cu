// Global-local pooling on the GPU: one launch for every view of a batch. A block owns one output
// token (grid-stride over tokens) and a slice of channels. Its threads form lanes x groups: a lane
// holds kVec consecutive channels (one vector load per cell), and the groups walk the token's
// cells k = group, group + groups, ... in parallel, so a temporal mean over hundreds of frames is
// not one thread's serial loop. Group partials meet in shared memory and are combined in group
// order: results are deterministic. Every plan row and frame-table entry a block uses is checked
// on the device first (pool_common.h). The backward: pool_backward.cu.
#include "pool_common.h"

namespace vidcore {
namespace {

using namespace pool_cuda;

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
pool_kernel(const T* __restrict__ x,                 // frames x H x W x D
            const int64_t* __restrict__ plan,        // num_tokens x kPoolPlanColumns
            int64_t num_tokens,
            const int64_t* __restrict__ frame_table, // frames named by the plan's slices
            int64_t table_size, int64_t frames, int64_t height, int64_t width, int64_t channels,
            T* __restrict__ out) {                   // num_tokens x D
  extern __shared__ float partial[];                 // [groups][lanes * kVec]
  const int lane = threadIdx.x, group = threadIdx.y;
  const int lanes = blockDim.x, groups = blockDim.y;
  const int64_t d = (int64_t(blockIdx.y) * lanes + lane) * kVec;
  const bool active = d < channels;  // channels % kVec == 0
  float* mine = partial + (group * lanes + lane) * kVec;
  for (int64_t j = blockIdx.x; j < num_tokens; j += gridDim.x) {
    check_row(plan, j, table_size, height, width);
    const int64_t* row = plan + j * kPoolPlanColumns;
    const bool is_max = row[kPoolMode] == kPoolMax;
    const int64_t cells = pool_window_size(row);
    float acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = is_max ? -INFINITY : 0.0f;
    if (active) {
#pragma unroll 4  // independent loads in flight per thread
      for (int64_t k = group; k < cells; k += groups) {
        const int64_t cell = checked_cell(row, frame_table, frames, height, width, k);
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

template <typename T, int kVec>
void launch_vec(const T* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
                int64_t table_size, int64_t frames, int64_t height, int64_t width,
                int64_t channels, T* out, cudaStream_t stream) {
  // Even a 4096-channel temporal mean over 2048 frames is split at least 4 ways per block
  // (kThreads / kMaxLanes groups); wider rows take more blocks along y instead.
  unsigned slices;
  const dim3 block = block_shape(channels / kVec, &slices);
  const dim3 grid(unsigned(std::min<int64_t>(num_tokens, 1 << 30)), slices);
  const size_t shared = sizeof(float) * kVec * block.x * block.y;
  pool_kernel<T, kVec><<<grid, block, shared, stream>>>(x, plan, num_tokens, frame_table,
                                                       table_size, frames, height, width,
                                                       channels, out);
}

// The widest vector the channels allow (vector_width), from 16 bytes down.
template <typename T, int kVec = 16 / int(sizeof(T))>
void launch(const void* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
            int64_t table_size, int64_t frames, int64_t height, int64_t width, int64_t channels,
            void* out, int vec, cudaStream_t stream) {
  if constexpr (kVec > 1) {
    if (vec < kVec) {
      return launch<T, kVec / 2>(x, plan, num_tokens, frame_table, table_size, frames, height,
                                 width, channels, out, vec, stream);
    }
  }
  launch_vec<T, kVec>(static_cast<const T*>(x), plan, num_tokens, frame_table, table_size,
                      frames, height, width, channels, static_cast<T*>(out), stream);
}

template <typename T>
void launch(const void* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
            int64_t table_size, int64_t frames, int64_t height, int64_t width, int64_t channels,
            void* out, cudaStream_t stream) {
  launch<T>(x, plan, num_tokens, frame_table, table_size, frames, height, width, channels, out,
            vector_width<T>(channels, x, out), stream);
}

}  // namespace

cudaError_t launch_pool(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
                        const int64_t* frame_table, int64_t table_size, int64_t frames,
                        int64_t height, int64_t width, int64_t channels, void* out,
                        cudaStream_t stream) {
  if (num_tokens == 0 || channels == 0) return cudaSuccess;
  switch (scalar_type) {
    case kPoolHalf:
      launch<__half>(x, plan, num_tokens, frame_table, table_size, frames, height, width,
                     channels, out, stream);
      break;
    case kPoolBFloat16:
      launch<__nv_bfloat16>(x, plan, num_tokens, frame_table, table_size, frames, height, width,
                            channels, out, stream);
      break;
    case kPoolFloat:
      launch<float>(x, plan, num_tokens, frame_table, table_size, frames, height, width,
                    channels, out, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace vidcore
