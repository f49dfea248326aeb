// How the CPU twin of pool (csrc/cpu/pool.cpp) walks its input: frame blocks in memory order,
// every token that reads a block served while the block is cached, so the input is streamed
// from memory once whatever the views (a per-token gather streams it once per view).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vidcore/pool.h"

namespace vidcore {
namespace pool_cpu_schedule {

// Frames per block: a visit adds up to this many frames of a token at once, so a temporal mean
// reads and writes its partial sum once per block instead of once per frame (2 and 8 measured
// no better on the Video-ChatGPT shape).
constexpr int64_t kBlockFrames = 4;

// Channels per slice when `channels` is split `parts` ways: multiples of 16 (whole cache lines
// of fp32 partial sums), at least 16.
inline int64_t channel_slice(int64_t channels, int64_t parts) {
  return std::max<int64_t>(16, ((channels + parts - 1) / parts + 15) / 16 * 16);
}

// A visit = token `token` reading its frame slots [slot_begin, slot_end) (a maximal run of
// consecutive slots in one block). Visits are grouped by block in input order, tokens ascending
// within a block: visits of block b are [begin[b], begin[b + 1]).
struct Visits {
  std::vector<int64_t> begin, token, slot_begin, slot_end;
  int64_t blocks() const { return static_cast<int64_t>(begin.size()) - 1; }
};

inline Visits visits_by_block(const int64_t* plan, int64_t num_tokens,
                              const int64_t* frame_table) {
  int64_t frames = 0;
  for (int64_t j = 0; j < num_tokens; ++j) {
    const int64_t* row = plan + j * kPoolPlanColumns;
    for (int64_t s = row[kFrameBegin]; s < row[kFrameEnd]; ++s) {
      frames = std::max(frames, frame_table[s] + 1);
    }
  }
  const int64_t blocks = (frames + kBlockFrames - 1) / kBlockFrames;
  // Runs of each token, in token order; then a stable counting sort of the runs by block.
  std::vector<int64_t> run_token, run_begin, run_end;
  for (int64_t j = 0; j < num_tokens; ++j) {
    const int64_t* row = plan + j * kPoolPlanColumns;
    for (int64_t s = row[kFrameBegin]; s < row[kFrameEnd];) {
      const int64_t block = frame_table[s] / kBlockFrames;
      int64_t e = s + 1;
      while (e < row[kFrameEnd] && frame_table[e] / kBlockFrames == block) ++e;
      run_token.push_back(j), run_begin.push_back(s), run_end.push_back(e);
      s = e;
    }
  }
  Visits visits;
  visits.begin.assign(blocks + 1, 0);
  for (int64_t s : run_begin) ++visits.begin[frame_table[s] / kBlockFrames + 1];
  for (int64_t b = 0; b < blocks; ++b) visits.begin[b + 1] += visits.begin[b];
  const size_t runs = run_token.size();
  visits.token.resize(runs), visits.slot_begin.resize(runs), visits.slot_end.resize(runs);
  std::vector<int64_t> next(visits.begin.begin(), visits.begin.end() - 1);
  for (size_t i = 0; i < runs; ++i) {
    const int64_t v = next[frame_table[run_begin[i]] / kBlockFrames]++;
    visits.token[v] = run_token[i], visits.slot_begin[v] = run_begin[i];
    visits.slot_end[v] = run_end[i];
  }
  return visits;
}

// Work items: contiguous block ranges (balanced by cells read), each walked by one thread in
// memory order like a streaming reduction, times channel chunks when there are fewer ranges
// than threads. (Chunking channels to keep a block in L2 was measured slower: a thread reading
// part of every cell makes the L2 streamer fetch the rest.)
//
// The ranges are fixed by the plan, not by the thread count: a token visited in several ranges
// is summed range by range and the partials are added in range order, so where the ranges
// split decides the rounding. kRanges of them, whatever the threads, keep results bit-identical
// for any thread count (channel chunks do not change any channel's order); more threads than
// ranges split channels. Each range adds a partial per spanning token (a temporal mean's), so
// more ranges cost memory traffic: 8 measured slower than 4 and 2 on the 2-core CI machine,
// 4 keeps up to four threads on whole rows.
constexpr int64_t kRanges = 4;

// Below this many elements read (cells x channels), waking a second thread costs more than it
// saves (ATen's GRAIN_SIZE); the results are the same either way.
constexpr int64_t kSerialWork = 32768;

struct Partition {
  std::vector<int64_t> range_begin;  // [ranges + 1] block bounds
  std::vector<int64_t> range_of;     // range of each block
  int64_t chunk = 0, chunks = 0;     // channels per chunk, number of chunks
  int64_t threads = 1;               // threads worth waking

  int64_t ranges() const { return static_cast<int64_t>(range_begin.size()) - 1; }
  int64_t items() const { return ranges() * chunks; }
};

inline Partition partition(const Visits& visits, const int64_t* plan, int64_t channels,
                           int64_t threads) {
  const int64_t blocks = visits.blocks();
  std::vector<int64_t> work(blocks + 1, 0);  // cells read before each block
  for (int64_t b = 0; b < blocks; ++b) {
    work[b + 1] = work[b];
    for (int64_t v = visits.begin[b]; v < visits.begin[b + 1]; ++v) {
      const int64_t* row = plan + visits.token[v] * kPoolPlanColumns;
      work[b + 1] += (visits.slot_end[v] - visits.slot_begin[v]) *
                     (row[kRowEnd] - row[kRowBegin]) * (row[kColEnd] - row[kColBegin]);
    }
  }
  Partition part;
  if (work[blocks] * channels < kSerialWork) threads = 1;
  part.threads = threads;
  const int64_t ranges = std::max<int64_t>(1, std::min(kRanges, blocks));
  part.range_begin.assign(ranges + 1, blocks);
  part.range_of.resize(blocks);
  for (int64_t r = 0, b = 0; r < ranges; ++r) {
    part.range_begin[r] = b;
    while (b < blocks && (r == ranges - 1 || work[b + 1] * ranges <= work[blocks] * (r + 1))) {
      part.range_of[b++] = r;
    }
  }
  const int64_t wanted = (threads + ranges - 1) / ranges;  // chunks per range
  // One chunk: whole rows (coalesced visits need slot width == channels).
  part.chunk = wanted <= 1 ? std::max<int64_t>(channels, 1) : channel_slice(channels, wanted);
  part.chunks = (channels + part.chunk - 1) / part.chunk;
  return part;
}

// Partial sums (or maxima) of the tokens visited more than once by a work item, from their
// first visit to their last; slots are reused, so memory follows the tokens in flight. Tokens
// are known by their index among the tokens with several visits (`id`), so an item's state is
// sized by those, not by every token of the plan.
template <typename Acc>
struct LiveTokens {
  int64_t width = 0;
  const int64_t* id = nullptr;  // per token: index among multi-visit tokens, or -1
  std::vector<Acc> values;
  std::vector<int64_t> free_slots;
  std::vector<int64_t> slot_of, visits_left;  // per multi-visit token; slot -1 = none

  LiveTokens() = default;
  LiveTokens(const int64_t* id, int64_t multi_tokens, int64_t width)
      : width(width), id(id), slot_of(multi_tokens, -1), visits_left(multi_tokens, 0) {}

  int64_t slot(int64_t token) const { return slot_of[id[token]]; }
  bool live(int64_t token) const { return id[token] >= 0 && slot_of[id[token]] >= 0; }
  Acc* start(int64_t token) {
    int64_t slot;
    if (free_slots.empty()) {
      slot = static_cast<int64_t>(values.size()) / width;
      values.resize(values.size() + width);
    } else {
      slot = free_slots.back();
      free_slots.pop_back();
    }
    slot_of[id[token]] = slot;
    return values.data() + slot * width;
  }
  // Slots for tokens first, ..., first + count - 1, consecutive so that their partial results
  // form one contiguous span (see pool_tokens' coalesced visits).
  Acc* start_run(int64_t first, int64_t count) {
    const int64_t slot = static_cast<int64_t>(values.size()) / width;
    values.resize(values.size() + count * width);
    for (int64_t i = 0; i < count; ++i) slot_of[id[first + i]] = slot + i;
    return values.data() + slot * width;
  }
  Acc* find(int64_t token) { return values.data() + slot(token) * width; }
  bool last_visit(int64_t token) { return --visits_left[id[token]] == 0; }
  void release(int64_t token) {
    free_slots.push_back(slot(token));
    slot_of[id[token]] = -1;
  }
};

}  // namespace pool_cpu_schedule
}  // namespace vidcore
