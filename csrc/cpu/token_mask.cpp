// CPU twin of csrc/cuda/token_mask.cu: the same geometry, mask order and radix-select step from
// vidcore/token_mask.h, so the CPU tests exercise the selection logic the GPU runs.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "vidcore/token_mask.h"

namespace vidcore {
namespace {

// The order value of the unit of rank `rank` (0-based) among the video's units.
uint64_t select_order(const MaskGeometry& g, uint32_t video_base, int64_t units, int64_t rank) {
  uint64_t prefix = 0, prefix_mask = 0;
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = radix_shift(pass);
    std::array<uint32_t, kRadixBins> histogram{};
    for (int64_t u = 0; u < units; ++u) {
      const uint64_t order = mask_order(video_base, u);
      if ((order & prefix_mask) == prefix) ++histogram[(order >> shift) & (kRadixBins - 1)];
    }
    const int digit = radix_select_digit(histogram.data(), &rank);
    prefix |= static_cast<uint64_t>(digit) << shift;
    prefix_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
  }
  return prefix;
}

void mask_one_video(const int64_t* meta, int64_t video, const MaskGeometry& g, uint32_t seed,
                    int64_t* keep_idx) {
  const int64_t frames = meta[kNumFrames], masked = meta[kNumMasked];
  const int64_t units = num_units(g, frames);
  const int64_t tokens = frames * g.height * g.width;
  if (masked >= units || tokens == 0) return;  // nothing kept
  const uint32_t base = video_key_base(seed, static_cast<uint32_t>(video));
  // A unit is kept iff its order is >= the order of rank `masked` (ranks 0..masked-1 are masked).
  const uint64_t threshold = masked == 0 ? 0 : select_order(g, base, units, masked);
  int64_t* out = keep_idx + meta[kOutOffset];
  for (int64_t token = 0; token < tokens; ++token) {
    if (mask_order(base, unit_of_token(g, token)) >= threshold) *out++ = meta[kTokenOffset] + token;
  }
}

}  // namespace

void make_mask_cpu(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                   uint32_t seed, int64_t* keep_idx) {
  at::parallel_for(0, num_videos, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      mask_one_video(video_meta + b * kVideoMetaColumns, b, geometry, seed, keep_idx);
    }
  });
}

void gather_rows_cpu(const void* x, const int64_t* index, int64_t num_index, int64_t row_bytes,
                     void* out) {
  const auto* src = static_cast<const char*>(x);
  auto* dst = static_cast<char*>(out);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, num_index, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(dst + i * row_bytes, src + index[i] * row_bytes, row_bytes);
    }
  });
}

void unpack_rows_cpu(const void* packed, const int64_t* index, int64_t num_index, const void* fill,
                     int64_t num_rows, int64_t row_bytes, void* out) {
  const auto* src = static_cast<const char*>(packed);
  auto* dst = static_cast<char*>(out);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    // index is ascending: find this chunk's first kept row once, then walk both in step.
    int64_t j = lower_bound_row(index, num_index, begin);
    for (int64_t row = begin; row < end; ++row) {
      const bool kept = j < num_index && index[j] == row;
      std::memcpy(dst + row * row_bytes, kept ? src + j * row_bytes : fill, row_bytes);
      j += kept;
    }
  });
}

}  // namespace vidcore
