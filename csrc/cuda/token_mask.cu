// Token masking on the GPU: make_mask, and the fused mask_and_pack that also copies the kept rows,
// select and compact on the device with no host round trip. Every kernel first asserts its
// video's video_meta row (video_meta_error), which bounds everything it reads and writes.
//
// Two launch shapes, the same result (the kept set is a pure function of the inputs):
// - one block per video (many videos, or short ones): an 8-pass radix select over the video's
//   units, then a block-wide scan compacts its tokens (and copies their rows);
// - split (few long videos, so that every SM gets work): the selection and compaction of each
//   video are spread over many blocks: a coarse histogram of the top 12 bits of the orders,
//   the candidates of the bin holding rank m, an exact select among them (one block per video),
//   kept counts per token tile, then each tile compacts (and copies) at its offset.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "vidcore/token_mask.h"
#include "vidcore/token_pack.h"

namespace vidcore {
namespace {

constexpr int kMaskThreads = 512;
constexpr int64_t kUnitTile = 8192;   // units per block step of the split histogram / candidates
constexpr int64_t kTokenTile = 2048;  // tokens per block step of the split count / compaction
constexpr int64_t kMaxCandidates = 8192;  // per video; a fuller bin falls back to a full select
constexpr int64_t kSplitMinTokens = int64_t(1) << 15;
constexpr int64_t kSplitMinBytes = int64_t(1) << 20;  // rows a fused block would copy alone

using BlockScan = cub::BlockScan<int, kMaskThreads>;
using BlockSum64 = cub::BlockScan<long long, kMaskThreads>;
using BlockReduce64 = cub::BlockReduce<long long, kMaskThreads>;

struct Video {  // one video's row of video_meta, after its assert
  int64_t token_offset, out_offset, units, tokens, masked, kept;
  uint32_t base;
};

__device__ Video load_video(const int64_t* video_meta, int64_t video, int64_t num_videos,
                            const MaskGeometry& g, const MetaLimits& limits, uint32_t seed) {
  VIDCORE_KERNEL_ASSERT(video_meta_error(video_meta, video, num_videos, g, limits) == kMetaOk);
  const int64_t* meta = video_meta + video * kVideoMetaColumns;
  const int64_t frames = meta[kNumFrames], masked = meta[kNumMasked];
  return Video{meta[kTokenOffset], meta[kOutOffset], num_units(g, frames),
               frames * g.height * g.width, masked, kept_tokens(g, frames, masked),
               video_key_base(seed, static_cast<uint32_t>(video))};
}

// The order of rank `rank` among count orders order_of(i) (all distinct): 8 passes of an 8-bit
// radix select, the histogram in shared memory. Every thread of the block calls it.
template <typename OrderOf>
__device__ uint64_t block_radix_select(int64_t count, OrderOf order_of, int64_t rank) {
  __shared__ uint32_t histogram[kRadixBins];
  __shared__ int selected_digit;
  uint64_t prefix = 0, prefix_mask = 0;
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = radix_shift(pass);
    for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const uint64_t order = order_of(i);
      if ((order & prefix_mask) == prefix) {
        atomicAdd(&histogram[(order >> shift) & (kRadixBins - 1)], 1U);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) selected_digit = radix_select_digit(histogram, kRadixBins, &rank);
    __syncthreads();
    prefix |= static_cast<uint64_t>(selected_digit) << shift;
    prefix_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
    __syncthreads();  // everyone has read selected_digit before the next pass resets state
  }
  return prefix;
}

// Compacts the kept tokens of [begin, end) of a video into keep_idx[slot..] in ascending order,
// kMaskThreads tokens per step, and with kCopy copies their rows (one warp per row).
template <typename Vec, bool kCopy>
__device__ void compact_tokens(const MaskGeometry& g, const Video& v, uint64_t threshold,
                               int64_t begin, int64_t end, int64_t slot, int64_t* keep_idx,
                               const Vec* x, int64_t vecs, Vec* packed) {
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int64_t chunk_rows[kCopy ? kMaskThreads : 1];
  for (int64_t start = begin; start < end; start += kMaskThreads) {
    const int64_t token = start + threadIdx.x;
    const int kept = token < end && mask_order(v.base, unit_of_token(g, token)) >= threshold;
    int position, chunk_kept;
    BlockScan(scan_storage).ExclusiveSum(kept, position, chunk_kept);
    if (kept) {
      keep_idx[slot + position] = v.token_offset + token;
      if constexpr (kCopy) chunk_rows[position] = v.token_offset + token;
    }
    if constexpr (kCopy) {
      __syncthreads();  // chunk_rows is complete
      const int lane = threadIdx.x % 32;
      for (int k = threadIdx.x / 32; k < chunk_kept; k += kMaskThreads / 32) {
        const Vec* src = x + chunk_rows[k] * vecs;
        Vec* dst = packed + (slot + k) * vecs;
        for (int64_t i = lane; i < vecs; i += 32) dst[i] = src[i];
      }
    }
    slot += chunk_kept;
    __syncthreads();  // scan_storage and chunk_rows are reused by the next step
  }
}

// One block per video: select, then compact (and copy) the whole video.
template <typename Vec, bool kCopy>
__global__ void __launch_bounds__(kMaskThreads)
make_mask_kernel(const int64_t* __restrict__ video_meta,  // B x kVideoMetaColumns
                 int64_t num_videos, MaskGeometry g, uint32_t seed, MetaLimits limits,
                 int64_t* __restrict__ keep_idx,  // total_kept
                 const Vec* __restrict__ x, int64_t vecs,  // num_tokens x vecs
                 Vec* __restrict__ packed) {  // total_kept x vecs
  const Video v = load_video(video_meta, blockIdx.x, num_videos, g, limits, seed);
  if (v.kept == 0) return;  // uniform over the block
  const uint64_t threshold = v.masked == 0 ? 0 : block_radix_select(
      v.units, [&](int64_t u) { return mask_order(v.base, u); }, v.masked);
  compact_tokens<Vec, kCopy>(g, v, threshold, 0, v.tokens, v.out_offset, keep_idx, x, vecs,
                             packed);
}

// Scratch of the split shape, arrays over videos (make_mask_scratch_bytes lays it out).
struct SplitScratch {
  uint32_t* histogram;   // B x kCoarseBins
  uint32_t* candidates;  // B: candidates found per video (may exceed the capacity)
  uint64_t* orders;      // B x capacity: the candidates' orders, in any order
  uint64_t* threshold;   // B
  int64_t* tile_kept;    // B x tiles
  int64_t capacity, tiles;
};

// The coarse digit whose bin holds rank *rank of a video's histogram; *rank becomes the rank in
// that bin. Every thread of the block calls it; each sums kCoarseBins / kMaskThreads bins.
__device__ int coarse_select(const uint32_t* histogram, int64_t* rank) {
  constexpr int kPerThread = kCoarseBins / kMaskThreads;
  __shared__ typename BlockSum64::TempStorage scan_storage;
  __shared__ int selected_digit;
  __shared__ int64_t selected_rank;
  const uint32_t* mine = histogram + threadIdx.x * kPerThread;
  long long sum = 0, before;
  for (int i = 0; i < kPerThread; ++i) sum += mine[i];
  BlockSum64(scan_storage).ExclusiveSum(sum, before);
  if (*rank >= before && *rank < before + sum) {  // exactly one thread: rank < units
    int64_t r = *rank - before;
    selected_digit = threadIdx.x * kPerThread + radix_select_digit(mine, kPerThread, &r);
    selected_rank = r;
  }
  __syncthreads();
  *rank = selected_rank;
  return selected_digit;
}

__global__ void __launch_bounds__(kMaskThreads)
make_mask_histogram_kernel(const int64_t* __restrict__ video_meta, int64_t num_videos,
                           MaskGeometry g, uint32_t seed, MetaLimits limits, SplitScratch s) {
  __shared__ uint32_t local[kCoarseBins];
  const Video v = load_video(video_meta, blockIdx.y, num_videos, g, limits, seed);
  if (v.kept == 0 || v.masked == 0) return;  // nothing to select
  for (int d = threadIdx.x; d < kCoarseBins; d += blockDim.x) local[d] = 0;
  __syncthreads();
  for (int64_t first = blockIdx.x * kUnitTile; first < v.units; first += gridDim.x * kUnitTile) {
    for (int64_t u = first + threadIdx.x; u < min(v.units, first + kUnitTile); u += blockDim.x) {
      atomicAdd(&local[coarse_digit(mask_order(v.base, u))], 1U);
    }
  }
  __syncthreads();
  uint32_t* histogram = s.histogram + int64_t(blockIdx.y) * kCoarseBins;
  for (int d = threadIdx.x; d < kCoarseBins; d += blockDim.x) {
    if (local[d]) atomicAdd(&histogram[d], local[d]);
  }
}

__global__ void __launch_bounds__(kMaskThreads)
make_mask_candidates_kernel(const int64_t* __restrict__ video_meta, int64_t num_videos,
                            MaskGeometry g, uint32_t seed, MetaLimits limits, SplitScratch s) {
  const int64_t video = blockIdx.y;
  const Video v = load_video(video_meta, video, num_videos, g, limits, seed);
  if (v.kept == 0 || v.masked == 0) return;
  int64_t rank = v.masked;
  const int digit = coarse_select(s.histogram + video * kCoarseBins, &rank);
  for (int64_t first = blockIdx.x * kUnitTile; first < v.units; first += gridDim.x * kUnitTile) {
    for (int64_t u = first + threadIdx.x; u < min(v.units, first + kUnitTile); u += blockDim.x) {
      const uint64_t order = mask_order(v.base, u);
      if (coarse_digit(order) != digit) continue;
      const uint32_t slot = atomicAdd(&s.candidates[video], 1U);
      if (slot < s.capacity) s.orders[video * s.capacity + slot] = order;
    }
  }
}

// One block per video: the exact order of rank m, among the candidates when they all fit.
__global__ void __launch_bounds__(kMaskThreads)
make_mask_select_kernel(const int64_t* __restrict__ video_meta, int64_t num_videos,
                        MaskGeometry g, uint32_t seed, MetaLimits limits, SplitScratch s) {
  const int64_t video = blockIdx.x;
  const Video v = load_video(video_meta, video, num_videos, g, limits, seed);
  if (v.kept == 0) return;
  uint64_t threshold = 0;
  if (v.masked > 0) {
    int64_t rank = v.masked;
    coarse_select(s.histogram + video * kCoarseBins, &rank);
    const int64_t found = s.candidates[video];
    const uint64_t* orders = s.orders + video * s.capacity;
    threshold = found <= s.capacity
        ? block_radix_select(found, [&](int64_t i) { return orders[i]; }, rank)
        : block_radix_select(v.units, [&](int64_t u) { return mask_order(v.base, u); },
                             v.masked);
  }
  if (threadIdx.x == 0) s.threshold[video] = threshold;
}

__global__ void __launch_bounds__(kMaskThreads)
make_mask_count_kernel(const int64_t* __restrict__ video_meta, int64_t num_videos,
                       MaskGeometry g, uint32_t seed, MetaLimits limits, SplitScratch s) {
  __shared__ typename BlockReduce64::TempStorage reduce_storage;
  const int64_t video = blockIdx.y;
  const Video v = load_video(video_meta, video, num_videos, g, limits, seed);
  if (v.kept == 0) return;
  const uint64_t threshold = s.threshold[video];
  for (int64_t tile = blockIdx.x; tile * kTokenTile < v.tokens; tile += gridDim.x) {
    long long kept = 0;
    const int64_t end = min(v.tokens, (tile + 1) * kTokenTile);
    for (int64_t token = tile * kTokenTile + threadIdx.x; token < end; token += blockDim.x) {
      kept += mask_order(v.base, unit_of_token(g, token)) >= threshold;
    }
    kept = BlockReduce64(reduce_storage).Sum(kept);
    if (threadIdx.x == 0) s.tile_kept[video * s.tiles + tile] = kept;
    __syncthreads();  // reduce_storage is reused by the next tile
  }
}

template <typename Vec, bool kCopy>
__global__ void __launch_bounds__(kMaskThreads, 1)  // up to 128 registers: no spills
make_mask_write_kernel(const int64_t* __restrict__ video_meta, int64_t num_videos,
                       MaskGeometry g, uint32_t seed, MetaLimits limits, SplitScratch s,
                       int64_t* __restrict__ keep_idx, const Vec* __restrict__ x, int64_t vecs,
                       Vec* __restrict__ packed) {
  __shared__ typename BlockReduce64::TempStorage reduce_storage;
  __shared__ long long tile_offset;
  const int64_t video = blockIdx.y;
  const Video v = load_video(video_meta, video, num_videos, g, limits, seed);
  if (v.kept == 0) return;
  const int64_t* tile_kept = s.tile_kept + video * s.tiles;
  for (int64_t tile = blockIdx.x; tile * kTokenTile < v.tokens; tile += gridDim.x) {
    long long before = 0;  // kept tokens of the video's earlier tiles
    for (int64_t t = threadIdx.x; t < tile; t += blockDim.x) before += tile_kept[t];
    before = BlockReduce64(reduce_storage).Sum(before);
    if (threadIdx.x == 0) tile_offset = before;
    __syncthreads();
    compact_tokens<Vec, kCopy>(g, v, s.threshold[video], tile * kTokenTile,
                               min(v.tokens, (tile + 1) * kTokenTile),
                               v.out_offset + tile_offset, keep_idx, x, vecs, packed);
  }
}

struct LaunchShape {
  bool split;
  int64_t tiles;  // token tiles of the longest possible video
  unsigned token_blocks, unit_blocks;  // grid x of the split kernels
};

LaunchShape launch_shape(int64_t num_videos, const MaskGeometry& g, int64_t max_frames,
                         int64_t row_bytes) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t max_tokens = max_frames * g.height * g.width;
  const int64_t tiles = (max_tokens + kTokenTile - 1) / kTokenTile;
  const bool long_videos = max_tokens >= kSplitMinTokens ||
                           max_tokens >= kSplitMinBytes / std::max<int64_t>(row_bytes, 1);
  const bool split = num_videos > 0 && num_videos < 2 * sms && long_videos;
  const int64_t per_video = std::max<int64_t>(1, 4 * sms / std::max<int64_t>(num_videos, 1));
  const int64_t unit_tiles = (max_tokens + kUnitTile - 1) / kUnitTile;
  return LaunchShape{split, tiles, unsigned(std::clamp<int64_t>(tiles, 1, per_video)),
                     unsigned(std::clamp<int64_t>(unit_tiles, 1, per_video))};
}

int64_t candidate_capacity(const MaskGeometry& g, int64_t max_frames) {
  return std::min(kMaxCandidates, max_frames * g.height * g.width);
}

int64_t align8(int64_t bytes) { return (bytes + 7) / 8 * 8; }

SplitScratch split_scratch(void* scratch, int64_t num_videos, int64_t capacity, int64_t tiles) {
  char* p = static_cast<char*>(scratch);
  SplitScratch s{};
  s.histogram = reinterpret_cast<uint32_t*>(p);
  s.candidates = s.histogram + num_videos * kCoarseBins;  // zeroed together with the histogram
  p += align8(num_videos * (kCoarseBins + 1) * 4);
  s.orders = reinterpret_cast<uint64_t*>(p);
  s.threshold = s.orders + num_videos * capacity;
  s.tile_kept = reinterpret_cast<int64_t*>(s.threshold + num_videos);
  s.capacity = capacity;
  s.tiles = tiles;
  return s;
}

template <typename Vec, bool kCopy>
void launch(const int64_t* video_meta, int64_t num_videos, const MaskGeometry& g, uint32_t seed,
            const MetaLimits& limits, const LaunchShape& shape, void* scratch,
            const Vec* x, int64_t vecs, int64_t* keep_idx, Vec* packed, cudaStream_t stream) {
  if (!shape.split) {
    make_mask_kernel<Vec, kCopy><<<unsigned(num_videos), kMaskThreads, 0, stream>>>(
        video_meta, num_videos, g, seed, limits, keep_idx, x, vecs, packed);
    return;
  }
  const SplitScratch s = split_scratch(scratch, num_videos,
                                       candidate_capacity(g, limits.max_frames), shape.tiles);
  cudaMemsetAsync(s.histogram, 0, num_videos * (kCoarseBins + 1) * 4, stream);
  const dim3 units(shape.unit_blocks, unsigned(num_videos));
  const dim3 tokens(shape.token_blocks, unsigned(num_videos));
  make_mask_histogram_kernel<<<units, kMaskThreads, 0, stream>>>(video_meta, num_videos, g,
                                                                  seed, limits, s);
  make_mask_candidates_kernel<<<units, kMaskThreads, 0, stream>>>(video_meta, num_videos, g,
                                                                   seed, limits, s);
  make_mask_select_kernel<<<unsigned(num_videos), kMaskThreads, 0, stream>>>(
      video_meta, num_videos, g, seed, limits, s);
  make_mask_count_kernel<<<tokens, kMaskThreads, 0, stream>>>(video_meta, num_videos, g, seed,
                                                              limits, s);
  make_mask_write_kernel<Vec, kCopy><<<tokens, kMaskThreads, 0, stream>>>(
      video_meta, num_videos, g, seed, limits, s, keep_idx, x, vecs, packed);
}

}  // namespace

int64_t make_mask_scratch_bytes(int64_t num_videos, const MaskGeometry& geometry,
                                int64_t max_frames, int64_t row_bytes) {
  const LaunchShape shape = launch_shape(num_videos, geometry, max_frames, row_bytes);
  if (!shape.split) return 0;
  const int64_t capacity = candidate_capacity(geometry, max_frames);
  // A loose max_frames could ask for more scratch than int64 counts: -1, which the binding
  // reports (num_videos < 2 * SMs here, so the first product is small).
  if (shape.tiles > (kInt64Max / 8 - capacity - 1) / num_videos) return -1;
  return align8(num_videos * (kCoarseBins + 1) * 4) +
         8 * num_videos * (capacity + 1 + shape.tiles);
}

cudaError_t launch_mask_and_pack(const int64_t* video_meta, int64_t num_videos,
                                 MaskGeometry geometry, uint32_t seed, MetaLimits limits,
                                 void* scratch, const void* x, int64_t row_bytes,
                                 int64_t* keep_idx, void* packed, cudaStream_t stream) {
  if (num_videos == 0) return cudaSuccess;
  const LaunchShape shape = launch_shape(num_videos, geometry, limits.max_frames, row_bytes);
  if (x == nullptr) {
    launch<uint4, false>(video_meta, num_videos, geometry, seed, limits, shape, scratch, nullptr,
                         0, keep_idx, nullptr, stream);
    return cudaGetLastError();
  }
  with_row_vector(row_bytes, {x, packed}, [&](auto vec) {
    using Vec = decltype(vec);
    launch<Vec, true>(video_meta, num_videos, geometry, seed, limits, shape, scratch,
                      static_cast<const Vec*>(x), row_bytes / int64_t(sizeof(Vec)), keep_idx,
                      static_cast<Vec*>(packed), stream);
  });
  return cudaGetLastError();
}

cudaError_t launch_make_mask(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                             uint32_t seed, MetaLimits limits, void* scratch, int64_t* keep_idx,
                             cudaStream_t stream) {
  return launch_mask_and_pack(video_meta, num_videos, geometry, seed, limits, scratch, nullptr,
                              0, keep_idx, nullptr, stream);
}

}  // namespace vidcore
