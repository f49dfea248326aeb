// The gradient of pool on the GPU, as a gather: no atomics, so it is bit-identical run to run,
// and it sums in the order of the CPU twin (csrc/cpu/pool_backward.cpp), so the two agree bit
// for bit too. Two launches:
//  1. pool_pick_kernel: for every max row and channel, the box index of the cell torch's max
//     pooling picks (last NaN, else first maximum), one block per row like the forward.
//  2. pool_gather_kernel: a block owns a frame, a band of its grid rows and a slice of channels;
//     it lists the frame-table slots naming its frame (in order), and every (grid row, run of
//     columns) of the band sums, slot by slot, the plan rows that read it (found by binary
//     search: vidcore/pool.h), then writes grad_x once, in x's dtype.
#include "pool_common.h"

namespace vidcore {
namespace {

using namespace pool_cuda;

constexpr int kSlots = 512;  // frame-table slots listed per round of the gather

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
pool_pick_kernel(const T* __restrict__ x, const int64_t* __restrict__ plan, int64_t num_tokens,
                 const int64_t* __restrict__ frame_table, int64_t table_size, int64_t frames,
                 int64_t height, int64_t width, int64_t channels,
                 int32_t* __restrict__ picked) {          // num_tokens x D
  extern __shared__ float shared[];                     // values, then box indices
  const int lane = threadIdx.x, group = threadIdx.y;
  const int lanes = blockDim.x, groups = blockDim.y;
  float* values = shared;
  int32_t* indices = reinterpret_cast<int32_t*>(shared + groups * lanes * kVec);
  const int mine = (group * lanes + lane) * kVec;
  const int64_t d = (int64_t(blockIdx.y) * lanes + lane) * kVec;
  const bool active = d < channels;
  for (int64_t j = blockIdx.x; j < num_tokens; j += gridDim.x) {
    check_row(plan, j, table_size, height, width);  // every row, so the gather may trust them
    const int64_t* row = plan + j * kPoolPlanColumns;
    if (row[kPoolMode] != kPoolMax) continue;       // the same for the whole block
    const int64_t cells = pool_window_size(row);
    float best[kVec];
    int32_t index[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) best[i] = -INFINITY, index[i] = group < cells ? group : INT32_MAX;
    if (active) {
      for (int64_t k = group; k < cells; k += groups) {  // this group's cells, in box order
        const int64_t cell = checked_cell(row, frame_table, frames, height, width, k);
        const Pack<T, kVec> pack = *reinterpret_cast<const Pack<T, kVec>*>(x + cell * channels + d);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float v = to_float(pack.v[i]);
          if (pool_max_takes(best[i], v)) best[i] = v, index[i] = int32_t(k);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) values[mine + i] = best[i], indices[mine + i] = index[i];
    __syncthreads();
    if (group == 0 && active) {
      for (int g = 1; g < groups; ++g) {  // pool_max_beats: any order gives the scan's pick
        const int theirs = (g * lanes + lane) * kVec;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          if (pool_max_beats(best[i], index[i], values[theirs + i], indices[theirs + i])) {
            best[i] = values[theirs + i], index[i] = indices[theirs + i];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) picked[j * channels + d + i] = index[i];
    }
    __syncthreads();  // the next row reuses the shared arrays
  }
}

// Columns per accumulator tile: kCols x kVec floats in registers per thread.
template <int kVec>
constexpr int64_t kCols = 32 / kVec;

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads)
pool_gather_kernel(const T* __restrict__ grad, const int32_t* __restrict__ picked,
                   const int64_t* __restrict__ plan, int64_t num_tokens,
                   const int64_t* __restrict__ frame_table, int64_t table_size, int64_t frames,
                   int64_t height, int64_t width, int64_t channels, int64_t band,
                   T* __restrict__ grad_x) {              // frames x H x W x D
  __shared__ int64_t slot[kSlots], readers_lo[kSlots], readers_hi[kSlots];
  __shared__ int warp_hits[kThreads / 32];
  const int lane = threadIdx.x, group = threadIdx.y, groups = blockDim.y;
  const int threads = blockDim.x * blockDim.y, tid = group * blockDim.x + lane;
  const int warps = (threads + 31) / 32, warp = tid / 32, bit = tid % 32;
  const unsigned mask = warp < warps - 1 || threads % 32 == 0 ? 0xffffffffu
                                                              : (1u << (threads % 32)) - 1;
  const int64_t d = (int64_t(blockIdx.y) * blockDim.x + lane) * kVec;
  const bool active = d < channels;
  const int64_t row0 = blockIdx.z * band, rows = min(band, height - row0);
  const int64_t tiles = (width + kCols<kVec> - 1) / kCols<kVec>;
  for (int64_t f = blockIdx.x; f < frames; f += gridDim.x) {
    int64_t scan = 0;
    for (bool first_round = true; first_round || scan < table_size; first_round = false) {
      // List the slots naming frame f, in order, up to kSlots per round (usually one round).
      int listed = 0;
      while (scan < table_size && listed + threads <= kSlots) {
        const int64_t s = scan + tid;
        const bool hit = s < table_size && checked_frame(frame_table, s, frames) == f;
        const unsigned ballot = __ballot_sync(mask, hit);
        if (bit == 0) warp_hits[warp] = __popc(ballot);
        __syncthreads();
        int before = listed;
        for (int w = 0; w < warps; ++w) {
          before += w < warp ? warp_hits[w] : 0;
          listed += warp_hits[w];
        }
        if (hit) slot[before + __popc(ballot & ((1u << bit) - 1))] = s;
        __syncthreads();
        scan += threads;
      }
      for (int i = tid; i < listed; i += threads) {
        pool_slot_readers(plan, num_tokens, slot[i], &readers_lo[i], &readers_hi[i]);
      }
      __syncthreads();
      for (int64_t item = group; active && item < rows * tiles; item += groups) {
        const int64_t r = row0 + item / tiles, c_first = item % tiles * kCols<kVec>;
        T* out = grad_x + ((f * height + r) * width + c_first) * channels + d;
        float acc[kCols<kVec>][kVec];
#pragma unroll
        for (int c = 0; c < kCols<kVec>; ++c) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            acc[c][i] = first_round || c_first + c >= width ? 0.0f
                                                            : to_float(out[c * channels + i]);
          }
        }
        for (int i = 0; i < listed; ++i) {
          int64_t a, b;
          pool_row_readers(plan, readers_lo[i], readers_hi[i], r, &a, &b);
          for (int64_t j = a; j < b; ++j) {
            const int64_t* row = plan + j * kPoolPlanColumns;
            const int64_t c0 = row[kColBegin] - c_first, c1 = row[kColEnd] - c_first;
            if (c1 <= 0 || c0 >= kCols<kVec>) continue;
            const Pack<T, kVec> g = *reinterpret_cast<const Pack<T, kVec>*>(grad + j * channels + d);
            if (row[kPoolMode] != kPoolMax) {  // a mean: g / |box| on every cell of the window
              const float cells = float(pool_window_size(row));
#pragma unroll
              for (int v = 0; v < kVec; ++v) {
                const float share = to_float(g.v[v]) / cells;
#pragma unroll
                for (int c = 0; c < kCols<kVec>; ++c) {
                  if (c >= c0 && c < c1) acc[c][v] += share;
                }
              }
              continue;
            }
#pragma unroll
            for (int v = 0; v < kVec; ++v) {  // a max: g on the cell it picked, if here
              const int64_t c = pool_picked_col(row, picked[j * channels + d + v], slot[i], r);
#pragma unroll
              for (int cc = 0; cc < kCols<kVec>; ++cc) {
                if (c - c_first == cc) acc[cc][v] += to_float(g.v[v]);
              }
            }
          }
        }
#pragma unroll
        for (int c = 0; c < kCols<kVec>; ++c) {
          if (c_first + c >= width) break;
          Pack<T, kVec> result;
#pragma unroll
          for (int i = 0; i < kVec; ++i) result.v[i] = from_float<T>(acc[c][i]);
          *reinterpret_cast<Pack<T, kVec>*>(out + c * channels) = result;
        }
      }
      __syncthreads();  // the next round (or frame) rewrites the slot list
    }
  }
}

template <typename T, int kVec>
void launch_vec(const T* grad, const T* x, const int64_t* plan, int64_t num_tokens,
                const int64_t* frame_table, int64_t table_size, int64_t frames, int64_t height,
                int64_t width, int64_t channels, int32_t* picked, T* grad_x,
                cudaStream_t stream) {
  unsigned slices;
  const dim3 block = block_shape(channels / kVec, &slices);
  if (num_tokens > 0) {
    const dim3 grid(unsigned(std::min<int64_t>(num_tokens, 1 << 30)), slices);
    const size_t shared = (sizeof(float) + sizeof(int32_t)) * kVec * block.x * block.y;
    pool_pick_kernel<T, kVec><<<grid, block, shared, stream>>>(
        x, plan, num_tokens, frame_table, table_size, frames, height, width, channels, picked);
  }
  // Bands of grid rows give the gather about 1024 blocks when frames x slices are few.
  const int64_t blocks = std::min<int64_t>(frames, 1 << 30) * slices;
  const int64_t bands = std::min<int64_t>({height, 65535, std::max<int64_t>(1, 1024 / blocks)});
  const int64_t band = (height + bands - 1) / bands;
  const dim3 grid(unsigned(std::min<int64_t>(frames, 1 << 30)), slices,
                  unsigned((height + band - 1) / band));
  pool_gather_kernel<T, kVec><<<grid, block, 0, stream>>>(
      grad, picked, plan, num_tokens, frame_table, table_size, frames, height, width, channels,
      band, grad_x);
}

template <typename T, int kVec = 16 / int(sizeof(T))>
void launch(const void* grad, const void* x, const int64_t* plan, int64_t num_tokens,
            const int64_t* frame_table, int64_t table_size, int64_t frames, int64_t height,
            int64_t width, int64_t channels, int32_t* picked, void* grad_x, int vec,
            cudaStream_t stream) {
  if constexpr (kVec > 1) {
    if (vec < kVec) {
      return launch<T, kVec / 2>(grad, x, plan, num_tokens, frame_table, table_size, frames,
                                 height, width, channels, picked, grad_x, vec, stream);
    }
  }
  launch_vec<T, kVec>(static_cast<const T*>(grad), static_cast<const T*>(x), plan, num_tokens,
                      frame_table, table_size, frames, height, width, channels, picked,
                      static_cast<T*>(grad_x), stream);
}

template <typename T>
void launch(const void* grad, const void* x, const int64_t* plan, int64_t num_tokens,
            const int64_t* frame_table, int64_t table_size, int64_t frames, int64_t height,
            int64_t width, int64_t channels, int32_t* picked, void* grad_x,
            cudaStream_t stream) {
  // grad, x and grad_x rows all have `channels` elements: one width fits the three.
  const int vec = std::min(vector_width<T>(channels, grad, x), vector_width<T>(channels, grad_x,
                                                                                grad_x));
  launch<T>(grad, x, plan, num_tokens, frame_table, table_size, frames, height, width, channels,
            picked, grad_x, vec, stream);
}

}  // namespace

cudaError_t launch_pool_backward(const void* grad, const void* x, int scalar_type,
                                 const int64_t* plan, int64_t num_tokens,
                                 const int64_t* frame_table, int64_t table_size, int64_t frames,
                                 int64_t height, int64_t width, int64_t channels,
                                 int32_t* picked, void* grad_x, cudaStream_t stream) {
  if (channels == 0 || frames == 0 || height == 0 || width == 0) return cudaSuccess;
  switch (scalar_type) {
    case kPoolHalf:
      launch<__half>(grad, x, plan, num_tokens, frame_table, table_size, frames, height, width,
                     channels, picked, grad_x, stream);
      break;
    case kPoolBFloat16:
      launch<__nv_bfloat16>(grad, x, plan, num_tokens, frame_table, table_size, frames, height,
                            width, channels, picked, grad_x, stream);
      break;
    case kPoolFloat:
      launch<float>(grad, x, plan, num_tokens, frame_table, table_size, frames, height, width,
                    channels, picked, grad_x, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace vidcore
