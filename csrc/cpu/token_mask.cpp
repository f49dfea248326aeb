// CPU twin of csrc/cuda/token_mask.cu (make_mask and the fused mask_and_pack): the geometry, mask
// order and selection steps of vidcore/token_mask.h. The selection is CUDA's split selection: a
// coarse histogram over tiles of units, then an exact rank among the one bin's candidates;
// the compaction counts kept tokens per tile, then writes each tile at its offset. Every step's
// result is a pure function of the input (integer counts, a unique rank), so keep_idx is the
// same for any thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <vector>

#include "vidcore/token_mask.h"

namespace vidcore {
namespace {

constexpr int64_t kUnitTile = 1 << 14;   // units per task of the selection
constexpr int64_t kTokenTile = 1 << 13;  // tokens per task of the compaction

// The order value of the unit of rank `rank` (0-based, rank < units) among the video's units.
uint64_t select_order(uint32_t base, int64_t units, int64_t rank) {
  std::array<uint32_t, kCoarseBins> histogram{};
  std::mutex merge;
  at::parallel_for(0, units, kUnitTile, [&](int64_t begin, int64_t end) {
    std::array<uint32_t, kCoarseBins> local{};
    for (int64_t u = begin; u < end; ++u) ++local[coarse_digit(mask_order(base, u))];
    const std::lock_guard<std::mutex> lock(merge);
    for (int d = 0; d < kCoarseBins; ++d) histogram[d] += local[d];
  });
  const int digit = radix_select_digit(histogram.data(), kCoarseBins, &rank);
  std::vector<uint64_t> candidates;  // the orders in the chosen bin, in any order
  candidates.reserve(histogram[digit]);
  at::parallel_for(0, units, kUnitTile, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> local;
    for (int64_t u = begin; u < end; ++u) {
      const uint64_t order = mask_order(base, u);
      if (coarse_digit(order) == digit) local.push_back(order);
    }
    const std::lock_guard<std::mutex> lock(merge);
    candidates.insert(candidates.end(), local.begin(), local.end());
  });
  std::nth_element(candidates.begin(), candidates.begin() + rank, candidates.end());
  return candidates[rank];
}

// Calls emit(token, position) for every kept token of one video, position = its rank among the
// video's kept tokens; tiles of tokens run in parallel.
template <typename Emit>
void for_each_kept_token(const MaskGeometry& g, uint32_t base, uint64_t threshold, int64_t tokens,
                         Emit&& emit) {
  auto kept = [&](int64_t token) { return mask_order(base, unit_of_token(g, token)) >= threshold; };
  const int64_t tiles = (tokens + kTokenTile - 1) / kTokenTile;
  std::vector<int64_t> offsets(tiles + 1, 0);
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t last = std::min(tokens, (tile + 1) * kTokenTile);
      for (int64_t token = tile * kTokenTile; token < last; ++token) offsets[tile + 1] += kept(token);
    }
  });
  for (int64_t tile = 0; tile < tiles; ++tile) offsets[tile + 1] += offsets[tile];
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      int64_t position = offsets[tile];
      const int64_t last = std::min(tokens, (tile + 1) * kTokenTile);
      for (int64_t token = tile * kTokenTile; token < last; ++token) {
        if (kept(token)) emit(token, position++);
      }
    }
  });
}

// Selects and compacts every video; with x != nullptr also copies the kept rows into packed.
void select_and_compact(const int64_t* video_meta, int64_t num_videos, const MaskGeometry& g,
                        uint32_t seed, const char* x, int64_t row_bytes, int64_t* keep_idx,
                        char* packed) {
  auto one_video = [&](int64_t video) {
    const int64_t* meta = video_meta + video * kVideoMetaColumns;
    const int64_t frames = meta[kNumFrames], masked = meta[kNumMasked];
    const int64_t units = num_units(g, frames), tokens = frames * g.height * g.width;
    if (kept_tokens(g, frames, masked) == 0) return;
    const uint32_t base = video_key_base(seed, static_cast<uint32_t>(video));
    // A unit is kept iff its order is >= the order of rank `masked` (ranks below are masked).
    const uint64_t threshold = masked == 0 ? 0 : select_order(base, units, masked);
    const int64_t token_offset = meta[kTokenOffset], out_offset = meta[kOutOffset];
    for_each_kept_token(g, base, threshold, tokens, [&](int64_t token, int64_t position) {
      const int64_t row = token_offset + token, slot = out_offset + position;
      keep_idx[slot] = row;
      if (x != nullptr) std::memcpy(packed + slot * row_bytes, x + row * row_bytes, row_bytes);
    });
  };
  // Many videos: one task per video (the steps inside run inline); few: parallel inside each.
  if (num_videos >= at::get_num_threads()) {
    at::parallel_for(0, num_videos, 1, [&](int64_t begin, int64_t end) {
      for (int64_t video = begin; video < end; ++video) one_video(video);
    });
  } else {
    for (int64_t video = 0; video < num_videos; ++video) one_video(video);
  }
}

}  // namespace

void make_mask_cpu(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                   uint32_t seed, int64_t* keep_idx) {
  select_and_compact(video_meta, num_videos, geometry, seed, nullptr, 0, keep_idx, nullptr);
}

void mask_and_pack_cpu(const int64_t* video_meta, int64_t num_videos, MaskGeometry geometry,
                       uint32_t seed, const void* x, int64_t row_bytes, int64_t* keep_idx,
                       void* packed) {
  select_and_compact(video_meta, num_videos, geometry, seed, static_cast<const char*>(x),
                     row_bytes, keep_idx, static_cast<char*>(packed));
}

}  // namespace vidcore
