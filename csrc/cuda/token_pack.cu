// Packing on the GPU: pack gathers rows, unpack scatters them back around a fill row, and
// unpack_fill_grad sums the masked rows in the fixed pairwise order of vidcore/token_pack.h.
// Rows move with the widest aligned vector type, one group of lanes per row, so each row's
// index work (pack: the source row; unpack: the binary search) happens once per row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "vidcore/token_pack.h"

namespace vidcore {
namespace {

constexpr int kCopyThreads = 256;
constexpr int kFillGradThreads = 256;
constexpr int kCombineThreads = 128;  // 31 levels x 128 threads x 8 B (double): 31 KiB shared

// Lanes per row: the smallest power of two >= the row's vectors, at most a warp.
int group_lanes(int64_t vecs_per_row) {
  int lanes = 1;
  while (lanes < 32 && lanes < vecs_per_row) lanes *= 2;
  return lanes;
}

unsigned row_blocks(int64_t rows, int lanes) {
  const int64_t rows_per_block = kCopyThreads / lanes;
  return unsigned(std::clamp<int64_t>((rows + rows_per_block - 1) / rows_per_block, 1, 1 << 16));
}

template <typename Vec>
__global__ void __launch_bounds__(kCopyThreads)
pack_kernel(const Vec* __restrict__ x,  // num_rows x vecs_per_row
            int64_t num_rows,
            const int64_t* __restrict__ index,  // num_index
            int64_t num_index, int64_t vecs_per_row, int lanes,
            Vec* __restrict__ out) {  // num_index x vecs_per_row
  const int lane = threadIdx.x % lanes;
  const int64_t groups = int64_t(gridDim.x) * (blockDim.x / lanes);
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes; i < num_index;
       i += groups) {
    const int64_t row = index[i];  // the same address for every lane of the group
    VIDCORE_KERNEL_ASSERT(row >= 0 && row < num_rows);
    for (int64_t v = lane; v < vecs_per_row; v += lanes) {
      out[i * vecs_per_row + v] = x[row * vecs_per_row + v];
    }
  }
}

template <typename Vec>
__global__ void __launch_bounds__(kCopyThreads)
unpack_kernel(const Vec* __restrict__ packed,  // num_index x vecs_per_row
              const int64_t* __restrict__ index,  // num_index, strictly ascending
              int64_t num_index,
              const Vec* __restrict__ fill,  // vecs_per_row
              int64_t num_rows, int64_t vecs_per_row, int lanes,
              Vec* __restrict__ out) {  // num_rows x vecs_per_row
  const int lane = threadIdx.x % lanes;
  const int64_t groups = int64_t(gridDim.x) * (blockDim.x / lanes);
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes; row < num_rows;
       row += groups) {
    // num_index <= num_rows (host check), so the groups of rows 0..num_index-1 check every entry.
    if (row < num_index) VIDCORE_KERNEL_ASSERT(index_ordered_at(index, num_index, num_rows, row));
    const int64_t j = lower_bound_row(index, num_index, row);  // j <= num_index: in range
    const Vec* src = (j < num_index && index[j] == row) ? packed + j * vecs_per_row : fill;
    for (int64_t v = lane; v < vecs_per_row; v += lanes) out[row * vecs_per_row + v] = src[v];
  }
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// One thread per (aligned tile of kFillGradTile rows, channel): the tile's pairwise sum of the
// masked rows. Tiles run on grid x (up to 2^31 - 1), channel blocks on grid y.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kFillGradThreads)
unpack_fill_grad_tile_kernel(const T* __restrict__ grad,  // num_rows x channels
                             const int64_t* __restrict__ index,  // num_index, strictly ascending
                             int64_t num_index, int64_t num_rows, int64_t channels,
                             Acc* __restrict__ partials) {  // tiles x channels
  const int64_t first = int64_t(blockIdx.x) * kFillGradTile;
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (blockIdx.y == 0) {  // entries first.. of index (num_index <= num_rows): each checked once
    for (int64_t j = first + threadIdx.x; j < min(first + kFillGradTile, num_index);
         j += blockDim.x) {
      VIDCORE_KERNEL_ASSERT(index_ordered_at(index, num_index, num_rows, j));
    }
  }
  if (c >= channels) return;
  // 32-bit row counters and a walking pointer: few values stay live across the row loop, so
  // the 11 levels of the sum fit in registers with no spill.
  const int rows = int(min(kFillGradTile, num_rows - first));
  int64_t j = lower_bound_row(index, num_index, first);
  // The tile-relative position of the next kept row (rows when none is left in this tile).
  auto next_kept = [&] {
    return j < num_index ? int(min(index[j] - first, int64_t(rows))) : rows;
  };
  int next = next_kept();
  const T* src = grad + first * channels + c;
  PairwiseSum<Acc, 11> sum;  // 1024 leaves: levels 0..10
  for (int r = 0; r < rows; ++r, src += channels) {
    const bool kept = r == next;
    if (kept) ++j, next = next_kept();
    sum.add(kept ? Acc(0) : to_acc(*src));
  }
  partials[int64_t(blockIdx.x) * channels + c] = sum.total();
}

// A thread's column of a [kLevels][kCombineThreads] shared array: PairwiseSum's levels.
template <typename Acc>
struct SharedColumn {
  Acc* base;
  __device__ Acc& operator[](int k) const { return base[k * kCombineThreads]; }
};

// One thread per channel: the pairwise sum over the tiles' sums (the upper levels of the tree).
// tiles <= INT32_MAX (launch_fill_grad), so up to 31 levels. Held in registers they push ptxas
// past the register count it aims for (at 256 threads it spills to stay at 64), so each thread
// keeps them in its own column of shared memory (level k of thread t at [k][t]: no bank
// conflicts), indexed at run time: a push touches only the levels its carry reaches.
template <typename Acc>
__global__ void __launch_bounds__(kCombineThreads)
unpack_fill_grad_combine_kernel(const Acc* __restrict__ partials,  // tiles x channels
                                int64_t tiles, int64_t channels,
                                Acc* __restrict__ fill_grad) {  // channels
  constexpr int kLevels = 31;
  __shared__ Acc levels[kLevels][kCombineThreads];
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  PairwiseSum<Acc, kLevels, SharedColumn<Acc>> sum{{&levels[0][threadIdx.x]}};
  const Acc* tile_sum = partials + c;
  for (int64_t t = 0; t < tiles; ++t, tile_sum += channels) sum.add(*tile_sum);
  fill_grad[c] = sum.total();
}

template <typename T, typename Acc>
cudaError_t launch_fill_grad(const void* grad, const int64_t* index, int64_t num_index,
                             int64_t num_rows, int64_t channels, void* partials, void* fill_grad,
                             cudaStream_t stream) {
  const int64_t tiles = (num_rows + kFillGradTile - 1) / kFillGradTile;
  const int64_t channel_blocks = (channels + kFillGradThreads - 1) / kFillGradThreads;
  if (tiles > 0 && channel_blocks > 0) {
    if (tiles > INT32_MAX || channel_blocks > 65535) return cudaErrorInvalidConfiguration;
    unpack_fill_grad_tile_kernel<T, Acc>
        <<<dim3(unsigned(tiles), unsigned(channel_blocks)), kFillGradThreads, 0, stream>>>(
            static_cast<const T*>(grad), index, num_index, num_rows, channels,
            static_cast<Acc*>(partials));
  }
  if (channels > 0) {
    const int64_t combine_blocks = (channels + kCombineThreads - 1) / kCombineThreads;
    unpack_fill_grad_combine_kernel<Acc><<<unsigned(combine_blocks), kCombineThreads, 0,
                                           stream>>>(static_cast<const Acc*>(partials), tiles,
                                                     channels, static_cast<Acc*>(fill_grad));
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pack(const void* x, int64_t num_rows, const int64_t* index, int64_t num_index,
                        int64_t row_bytes, void* out, cudaStream_t stream) {
  if (num_index == 0) return cudaSuccess;
  // Zero-byte rows still go through the kernel: it asserts every index.
  with_row_vector(row_bytes, {x, out}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    const int lanes = group_lanes(vecs);
    pack_kernel<Vec><<<row_blocks(num_index, lanes), kCopyThreads, 0, stream>>>(
        static_cast<const Vec*>(x), num_rows, index, num_index, vecs, lanes,
        static_cast<Vec*>(out));
  });
  return cudaGetLastError();
}

cudaError_t launch_unpack(const void* packed, const int64_t* index, int64_t num_index,
                          const void* fill, int64_t num_rows, int64_t row_bytes, void* out,
                          cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  with_row_vector(row_bytes, {packed, fill, out}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    const int lanes = group_lanes(vecs);
    unpack_kernel<Vec><<<row_blocks(num_rows, lanes), kCopyThreads, 0, stream>>>(
        static_cast<const Vec*>(packed), index, num_index, static_cast<const Vec*>(fill),
        num_rows, vecs, lanes, static_cast<Vec*>(out));
  });
  return cudaGetLastError();
}

cudaError_t launch_unpack_fill_grad(const void* grad, int scalar_type, const int64_t* index,
                                    int64_t num_index, int64_t num_rows, int64_t channels,
                                    void* partials, void* fill_grad, cudaStream_t stream) {
  switch (scalar_type) {
    case kFillFloat:
      return launch_fill_grad<float, float>(grad, index, num_index, num_rows, channels,
                                            partials, fill_grad, stream);
    case kFillHalf:
      return launch_fill_grad<__half, float>(grad, index, num_index, num_rows, channels,
                                             partials, fill_grad, stream);
    case kFillBFloat16:
      return launch_fill_grad<__nv_bfloat16, float>(grad, index, num_index, num_rows, channels,
                                                    partials, fill_grad, stream);
    default:
      return launch_fill_grad<double, double>(grad, index, num_index, num_rows, channels,
                                              partials, fill_grad, stream);
  }
}

}  // namespace vidcore
