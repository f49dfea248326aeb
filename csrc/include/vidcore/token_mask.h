// Spatio-temporal token masking (DESIGN.md op 1): unit geometry, mask order, radix-select step
// and the torch-free launchers of make_mask / pack / unpack. Written once for the CPU twin
// (csrc/cpu/token_mask.cpp) and the CUDA kernels (csrc/cuda/token_mask.cu).
//
// A video of T frames of H x W tokens is split into units (pattern): a token (random), a spatial
// position through all frames (tube), a frame (frame) or a kt x kh x kw block (block). Unit u gets
// the key k = unit_key(video_key_base(seed, b), u); the m units smallest in (k, u) are masked.
// (k, u) is packed into one 64-bit "mask order" value, unique per unit, so "the m smallest" is
// "order < the m-th smallest order", found by an 8-pass radix select over 8-bit digits.
#pragma once

#include <cstdint>

#include "vidcore/macros.h"
#include "vidcore/mask_hash.h"

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace vidcore {

enum MaskPattern : int32_t { kRandom = 0, kTube = 1, kFrame = 2, kBlock = 3 };

struct MaskGeometry {
  int32_t pattern;
  int64_t height, width;           // tokens per frame: height x width
  int64_t block_t, block_h, block_w;  // unit size of the block pattern (divides T, H, W)
};

// Per-video parameters, one row of the int64 [B, 4] `video_meta` tensor.
enum VideoMetaColumn { kTokenOffset = 0, kNumFrames = 1, kNumMasked = 2, kOutOffset = 3 };
constexpr int kVideoMetaColumns = 4;

VIDCORE_HD int64_t num_units(const MaskGeometry& g, int64_t frames) {
  switch (g.pattern) {
    case kRandom: return frames * g.height * g.width;
    case kTube: return g.height * g.width;
    case kFrame: return frames;
    default: return (frames / g.block_t) * (g.height / g.block_h) * (g.width / g.block_w);
  }
}

// Unit of the token at index `token` (raster order t, h, w) within its video.
VIDCORE_HD int64_t unit_of_token(const MaskGeometry& g, int64_t token) {
  const int64_t frame_size = g.height * g.width;
  const int64_t t = token / frame_size, in_frame = token % frame_size;
  switch (g.pattern) {
    case kRandom: return token;
    case kTube: return in_frame;
    case kFrame: return t;
    default: {
      const int64_t h = in_frame / g.width, w = in_frame % g.width;
      return ((t / g.block_t) * (g.height / g.block_h) + h / g.block_h) * (g.width / g.block_w) +
             w / g.block_w;
    }
  }
}

// (key, unit) as one value whose order is the masking order: key first, unit index on ties.
VIDCORE_HD uint64_t mask_order(uint32_t video_base, int64_t unit) {
  const uint32_t u = static_cast<uint32_t>(unit);
  return (static_cast<uint64_t>(unit_key(video_base, u)) << 32) | u;
}

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 64 / kRadixBits;

// One radix-select step: `histogram` counts the candidates' digits; returns the digit whose bin
// holds the candidate of rank *rank (0-based) and makes *rank its rank within that bin.
VIDCORE_HD int radix_select_digit(const uint32_t* histogram, int64_t* rank) {
  for (int digit = 0; digit < kRadixBins - 1; ++digit) {
    if (*rank < histogram[digit]) return digit;
    *rank -= histogram[digit];
  }
  return kRadixBins - 1;
}

VIDCORE_HD int radix_shift(int pass) { return 64 - kRadixBits * (pass + 1); }

// First position j in the ascending `index` with index[j] >= row (num_index if none).
VIDCORE_HD int64_t lower_bound_row(const int64_t* index, int64_t num_index, int64_t row) {
  int64_t lo = 0, hi = num_index;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (index[mid] < row) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// keep_idx[out_offset_b + j] = token_offset_b + (j-th kept token of video b), ascending.
void make_mask_cpu(const int64_t* video_meta,  // num_videos x kVideoMetaColumns
                   int64_t num_videos, MaskGeometry geometry, uint32_t seed,
                   int64_t* keep_idx);  // total kept

// out[i, :] = x[index[i], :] for rows of row_bytes bytes.
void gather_rows_cpu(const void* x, const int64_t* index, int64_t num_index, int64_t row_bytes,
                     void* out);

// out[r, :] = packed[j, :] if index[j] == r (index ascending), else fill[:].
void unpack_rows_cpu(const void* packed, const int64_t* index, int64_t num_index, const void* fill,
                     int64_t num_rows, int64_t row_bytes, void* out);

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t launch_make_mask(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                             uint32_t seed, int64_t* keep_idx, cudaStream_t stream);
cudaError_t launch_gather_rows(const void* x, const int64_t* index, int64_t num_index,
                               int64_t row_bytes, void* out, cudaStream_t stream);
cudaError_t launch_unpack_rows(const void* packed, const int64_t* index, int64_t num_index,
                               const void* fill, int64_t num_rows, int64_t row_bytes, void* out,
                               cudaStream_t stream);
#endif

}  // namespace vidcore
