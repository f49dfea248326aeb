// Spatio-temporal token masking (DESIGN.md op 1): unit geometry, mask order, the checks of a
// video_meta row, the selection steps, and the torch-free entry points of make_mask and the fused
// mask_and_pack. Written once for the CPU twin (csrc/cpu/token_mask.cpp) and the CUDA kernels
// (csrc/cuda/token_mask.cu).
//
// A video of T frames of H x W tokens is split into units (pattern): a token (random), a spatial
// position through all frames (tube), a frame (frame) or a kt x kh x kw block (block). Unit u gets
// the key k = unit_key(video_key_base(seed, b), u); the m units smallest in (k, u) are masked.
// (k, u) is packed into one 64-bit "mask order" value, unique per unit (u < 2^32), so "the m
// smallest" is "order < the order of rank m", found by radix selection.
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
  int64_t height, width;              // tokens per frame: height x width (< 2^31 together)
  int64_t block_t, block_h, block_w;  // unit size of the block pattern (kh | H, kw | W)
};

// Per-video parameters, one row of the int64 [B, 4] `video_meta` tensor.
enum VideoMetaColumn { kTokenOffset = 0, kNumFrames = 1, kNumMasked = 2, kOutOffset = 3 };
constexpr int kVideoMetaColumns = 4;

// Limits the index math relies on: unit indices fit 32 bits (so orders are unique), and
// T_b * H * W < 2^62 leaves room for offsets in int64.
constexpr int64_t kMaxUnits = (int64_t(1) << 32) - 1;
constexpr int64_t kMaxFrames = (int64_t(1) << 31) - 1;  // bound of max_frames
constexpr int64_t kMaxFrameTokens = (int64_t(1) << 31) - 1;  // bound of H * W
constexpr int64_t kInt64Max = INT64_MAX;

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

// Tokens a video keeps when `masked` of its units are masked: each unit covers tokens / units
// tokens (the geometry checks guarantee the division is exact).
VIDCORE_HD int64_t kept_tokens(const MaskGeometry& g, int64_t frames, int64_t masked) {
  const int64_t units = num_units(g, frames), tokens = frames * g.height * g.width;
  return masked >= units || tokens == 0 ? 0 : (units - masked) * (tokens / units);
}

enum VideoMetaError : int {
  kMetaOk = 0, kMetaFrames, kMetaMasked, kMetaTokenOffset, kMetaOutOffset, kMetaNextTokenOffset,
  kMetaNextOutOffset
};

// The sizes a video_meta tensor is checked against (host values of the call).
struct MetaLimits {
  int64_t max_frames;  // every T_b <= max_frames <= kMaxFrames
  int64_t num_tokens;  // token rows that exist: every video ends at or before (kInt64Max: none)
  int64_t total_kept;  // length of keep_idx: the last video's kept tokens end there
};

// Why row b of video_meta cannot run (kMetaOk when it can). O(1): it reads row b and the
// offsets of row b + 1, so the CUDA kernel of video b checks its own row before touching memory.
// Row b alone bounds its accesses: keep_idx[out_offset + j] for j < kept lies in [0, total_kept)
// and token rows token_offset + token lie in [0, num_tokens). The links between rows make the
// layout exact: videos follow each other from (0, 0) and the last ends at total_kept, so every
// slot of keep_idx is written exactly once.
VIDCORE_HD int video_meta_error(const int64_t* video_meta, int64_t b, int64_t num_videos,
                                const MaskGeometry& g, const MetaLimits& limits) {
  const int64_t* row = video_meta + b * kVideoMetaColumns;
  const int64_t* next = row + kVideoMetaColumns;  // read only when b + 1 < num_videos
  const int64_t frames = row[kNumFrames], masked = row[kNumMasked], total_kept = limits.total_kept;
  if (frames < 0 || frames > limits.max_frames ||
      (g.pattern == kBlock && frames % g.block_t != 0) || num_units(g, frames) > kMaxUnits) {
    return kMetaFrames;
  }
  if (masked < 0 || masked > num_units(g, frames)) return kMetaMasked;
  const int64_t tokens = frames * g.height * g.width, kept = kept_tokens(g, frames, masked);
  const int64_t token_offset = row[kTokenOffset], out_offset = row[kOutOffset];
  if (token_offset < 0 || token_offset > limits.num_tokens - tokens ||
      (b == 0 && token_offset != 0)) {
    return kMetaTokenOffset;
  }
  // out_offset <= total_kept - kept, so out_offset + kept does not overflow.
  if (out_offset < 0 || kept > total_kept || out_offset > total_kept - kept ||
      (b == 0 && out_offset != 0) || (b + 1 == num_videos && out_offset + kept != total_kept)) {
    return kMetaOutOffset;
  }
  if (b + 1 < num_videos && next[kTokenOffset] != token_offset + tokens) {
    return kMetaNextTokenOffset;
  }
  if (b + 1 < num_videos && next[kOutOffset] != out_offset + kept) return kMetaNextOutOffset;
  return kMetaOk;
}

// (key, unit) as one value whose order is the masking order: key first, unit index on ties.
VIDCORE_HD uint64_t mask_order(uint32_t video_base, int64_t unit) {
  const uint32_t u = static_cast<uint32_t>(unit);
  return (static_cast<uint64_t>(unit_key(video_base, u)) << 32) | u;
}

// One radix-select step: `histogram` counts the candidates' digits over `bins` bins; returns the
// digit whose bin holds the candidate of rank *rank (0-based) and makes *rank its rank in that bin.
VIDCORE_HD int radix_select_digit(const uint32_t* histogram, int bins, int64_t* rank) {
  for (int digit = 0; digit < bins - 1; ++digit) {
    if (*rank < histogram[digit]) return digit;
    *rank -= histogram[digit];
  }
  return bins - 1;
}

// The 8-bit radix select of one thread block (CUDA) over all of a video's units.
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 64 / kRadixBits;
VIDCORE_HD int radix_shift(int pass) { return 64 - kRadixBits * (pass + 1); }

// The two-step select of long videos (CPU twin, and CUDA's split selection): a histogram of the
// top kCoarseBits of every order finds the bin of rank m, then only that bin's units (about
// U / 4096 of them) are ranked exactly.
constexpr int kCoarseBits = 12;
constexpr int kCoarseBins = 1 << kCoarseBits;
VIDCORE_HD int coarse_digit(uint64_t order) { return static_cast<int>(order >> (64 - kCoarseBits)); }

// keep_idx[out_offset_b + j] = token_offset_b + (j-th kept token of video b), ascending.
// Rows must pass video_meta_error (the binding checks them first).
void make_mask_cpu(const int64_t* video_meta,  // num_videos x kVideoMetaColumns
                   int64_t num_videos, MaskGeometry geometry, uint32_t seed,
                   int64_t* keep_idx);  // total kept

// make_mask_cpu, and in the same pass packed[i, :] = x[keep_idx[i], :] (rows of row_bytes).
void mask_and_pack_cpu(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                       uint32_t seed, const void* x,  // sum_b T_b * H * W rows
                       int64_t row_bytes, int64_t* keep_idx,
                       void* packed);  // total kept rows

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
// The kernels assert every video_meta row against `limits` on the device (no host sync); a
// violation surfaces as cudaErrorAssert. `scratch`: make_mask_scratch_bytes(...) bytes (row_bytes
// 0 for make_mask), on the current device.
int64_t make_mask_scratch_bytes(int64_t num_videos, const MaskGeometry& geometry,
                                int64_t max_frames, int64_t row_bytes);
cudaError_t launch_make_mask(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                             uint32_t seed, MetaLimits limits, void* scratch, int64_t* keep_idx,
                             cudaStream_t stream);
// x == nullptr: make_mask; else also packed[i, :] = x[keep_idx[i], :] (rows of row_bytes).
cudaError_t launch_mask_and_pack(const int64_t* video_meta, int64_t num_videos,
                                 MaskGeometry geometry, uint32_t seed, MetaLimits limits,
                                 void* scratch, const void* x, int64_t row_bytes,
                                 int64_t* keep_idx, void* packed, cudaStream_t stream);
#endif

}  // namespace vidcore
