// Token masking on the GPU: make_mask selects and compacts on device (no host round trip);
// gather_rows / unpack_rows move whole token rows with the widest aligned vector type.
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "vidcore/token_mask.h"

namespace vidcore {
namespace {

constexpr int kMaskThreads = 512;
constexpr int kCopyThreads = 256;

// One block per video: an 8-pass radix select finds the order value of rank `masked` among the
// video's units (keys are recomputed by hashing on every pass: cheaper than storing them), then
// a block-wide scan compacts the kept tokens in ascending order.
__global__ void __launch_bounds__(kMaskThreads)
make_mask_kernel(const int64_t* __restrict__ video_meta,  // B x kVideoMetaColumns
                 MaskGeometry g, uint32_t seed,
                 int64_t* __restrict__ keep_idx) {  // total kept
  using BlockScan = cub::BlockScan<int, kMaskThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ uint32_t histogram[kRadixBins];
  __shared__ int selected_digit;

  const int64_t video = blockIdx.x;
  const int64_t* meta = video_meta + video * kVideoMetaColumns;
  const int64_t frames = meta[kNumFrames], masked = meta[kNumMasked];
  const int64_t units = num_units(g, frames), tokens = frames * g.height * g.width;
  if (masked >= units || tokens == 0) return;  // uniform over the block: nothing kept
  const uint32_t base = video_key_base(seed, static_cast<uint32_t>(video));

  uint64_t threshold = 0;  // kept iff mask_order >= threshold
  if (masked > 0) {
    uint64_t prefix = 0, prefix_mask = 0;
    int64_t rank = masked;  // meaningful in thread 0 only
    for (int pass = 0; pass < kRadixPasses; ++pass) {
      const int shift = radix_shift(pass);
      for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) histogram[i] = 0;
      __syncthreads();
      for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
        const uint64_t order = mask_order(base, u);
        if ((order & prefix_mask) == prefix) {
          atomicAdd(&histogram[(order >> shift) & (kRadixBins - 1)], 1U);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) selected_digit = radix_select_digit(histogram, &rank);
      __syncthreads();
      prefix |= static_cast<uint64_t>(selected_digit) << shift;
      prefix_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
      __syncthreads();  // everyone has read selected_digit before the next pass resets state
    }
    threshold = prefix;
  }

  int64_t* out = keep_idx + meta[kOutOffset];
  const int64_t token_offset = meta[kTokenOffset];
  int64_t written = 0;
  for (int64_t start = 0; start < tokens; start += kMaskThreads) {
    const int64_t token = start + threadIdx.x;
    const int kept = token < tokens && mask_order(base, unit_of_token(g, token)) >= threshold;
    int position, chunk_kept;
    BlockScan(scan_storage).ExclusiveSum(kept, position, chunk_kept);
    if (kept) out[written + position] = token_offset + token;
    written += chunk_kept;
    __syncthreads();  // scan_storage is reused by the next chunk
  }
}

template <typename Vec>
__global__ void gather_rows_kernel(const Vec* __restrict__ x,  // rows x vecs_per_row
                                   const int64_t* __restrict__ index,  // num_index
                                   int64_t num_index, int64_t vecs_per_row,
                                   Vec* __restrict__ out) {  // num_index x vecs_per_row
  const int64_t total = num_index * vecs_per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / vecs_per_row;
    out[i] = x[index[row] * vecs_per_row + (i - row * vecs_per_row)];
  }
}

template <typename Vec>
__global__ void unpack_rows_kernel(const Vec* __restrict__ packed,  // num_index x vecs_per_row
                                   const int64_t* __restrict__ index,  // num_index, ascending
                                   int64_t num_index,
                                   const Vec* __restrict__ fill,  // vecs_per_row
                                   int64_t num_rows, int64_t vecs_per_row,
                                   Vec* __restrict__ out) {  // num_rows x vecs_per_row
  const int64_t total = num_rows * vecs_per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / vecs_per_row, v = i - row * vecs_per_row;
    const int64_t j = lower_bound_row(index, num_index, row);
    out[i] = (j < num_index && index[j] == row) ? packed[j * vecs_per_row + v] : fill[v];
  }
}

unsigned copy_blocks(int64_t total) {
  return unsigned(std::clamp<int64_t>((total + kCopyThreads - 1) / kCopyThreads, 1, 1 << 16));
}

// Calls fn(Vec{}) with the widest of 16/8/4/2/1-byte types that divides row_bytes and aligns
// every pointer: a 2048-byte bf16 row moves as 128 x 16-byte loads.
template <typename Fn>
void with_row_vector(int64_t row_bytes, std::initializer_list<const void*> pointers, Fn fn) {
  auto fits = [&](int64_t width) {
    if (row_bytes % width) return false;
    for (const void* p : pointers) {
      if (reinterpret_cast<uintptr_t>(p) % width) return false;
    }
    return true;
  };
  if (fits(16)) fn(uint4{});
  else if (fits(8)) fn(uint2{});
  else if (fits(4)) fn(uint32_t{});
  else if (fits(2)) fn(uint16_t{});
  else fn(uint8_t{});
}

}  // namespace

cudaError_t launch_make_mask(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                             uint32_t seed, int64_t* keep_idx, cudaStream_t stream) {
  if (num_videos == 0) return cudaSuccess;
  make_mask_kernel<<<unsigned(num_videos), kMaskThreads, 0, stream>>>(video_meta, geometry, seed,
                                                                      keep_idx);
  return cudaGetLastError();
}

cudaError_t launch_gather_rows(const void* x, const int64_t* index, int64_t num_index,
                               int64_t row_bytes, void* out, cudaStream_t stream) {
  if (num_index == 0 || row_bytes == 0) return cudaSuccess;
  with_row_vector(row_bytes, {x, out}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    gather_rows_kernel<Vec><<<copy_blocks(num_index * vecs), kCopyThreads, 0, stream>>>(
        static_cast<const Vec*>(x), index, num_index, vecs, static_cast<Vec*>(out));
  });
  return cudaGetLastError();
}

cudaError_t launch_unpack_rows(const void* packed, const int64_t* index, int64_t num_index,
                               const void* fill, int64_t num_rows, int64_t row_bytes, void* out,
                               cudaStream_t stream) {
  if (num_rows == 0 || row_bytes == 0) return cudaSuccess;
  with_row_vector(row_bytes, {packed, fill, out}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    unpack_rows_kernel<Vec><<<copy_blocks(num_rows * vecs), kCopyThreads, 0, stream>>>(
        static_cast<const Vec*>(packed), index, num_index, static_cast<const Vec*>(fill),
        num_rows, vecs, static_cast<Vec*>(out));
  });
  return cudaGetLastError();
}

}  // namespace vidcore
