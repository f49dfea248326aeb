// CPU twin of csrc/cuda/pool.cu: the same plan rows and window math (vidcore/pool.h). The
// forward streams the input once in frame blocks (pool_schedule.h), channels innermost so every
// cell is read contiguously. (The backward: pool_backward.cpp.)
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pool_schedule.h"
#include "vidcore/pool.h"

namespace vidcore {
namespace {

using pool_cpu_schedule::LiveTokens;
using pool_cpu_schedule::Partition;
using pool_cpu_schedule::Visits;

// Cells are mostly read in memory order (a box's columns, the tokens of a frame one after the
// other), but a core keeps only ~10 cache misses in flight: asking for the channel slice of the
// cell kPrefetchCells further on keeps the stream going (1.5-2x on a 2-core Xeon).
constexpr int64_t kPrefetchCells = 8;

template <typename T>
inline void prefetch_ahead(const T* cell, int64_t channels, int64_t n) {
  const char* ahead = reinterpret_cast<const char*>(cell + kPrefetchCells * channels);
  for (int64_t byte = 0; byte < n * int64_t(sizeof(T)); byte += 64) {
    __builtin_prefetch(ahead + byte, 0, 1);
  }
}

// acc[0:n] (+)= cells[0..count)[0:n]: sums for a mean, the NaN-propagating maximum for max. Up
// to four cells per pass cut the loads and stores of acc so that the loop keeps up with memory;
// the mode test stays outside the channel loops so that they vectorise.
template <typename T, typename Acc>
void add_cells(const T* const* cells, int count, int64_t n, bool is_max, Acc* __restrict__ acc) {
  if (count == 4) {
    const T* __restrict__ a = cells[0];
    const T* __restrict__ b = cells[1];
    const T* __restrict__ c = cells[2];
    const T* __restrict__ e = cells[3];
    if (is_max) {
      for (int64_t d = 0; d < n; ++d) {
        acc[d] = pool_max(pool_max(pool_max(pool_max(acc[d], Acc(a[d])), Acc(b[d])), Acc(c[d])),
                          Acc(e[d]));
      }
    } else {
      for (int64_t d = 0; d < n; ++d) acc[d] += (Acc(a[d]) + Acc(b[d])) + (Acc(c[d]) + Acc(e[d]));
    }
    return;
  }
  for (int i = 0; i < count; ++i) {
    const T* __restrict__ a = cells[i];
    if (is_max) {
      for (int64_t d = 0; d < n; ++d) acc[d] = pool_max(acc[d], Acc(a[d]));
    } else {
      for (int64_t d = 0; d < n; ++d) acc[d] += Acc(a[d]);
    }
  }
}

// acc (+)= channels d0:d0+n of the cells of the plan row's box in frame slots [s0, s1), in scan
// order, four cells at a time.
template <typename T, typename Acc>
void accumulate_visit(const T* x, const int64_t* row, const int64_t* frame_table, int64_t s0,
                      int64_t s1, int64_t height, int64_t width, int64_t channels, int64_t d0,
                      int64_t n, bool is_max, Acc* acc) {
  const T* cells[4];
  int count = 0;
  for (int64_t s = s0; s < s1; ++s) {
    pool_for_each_cell_in_frame(row, frame_table[s], height, width, [&](int64_t cell) {
      cells[count] = x + cell * channels + d0;
      prefetch_ahead(cells[count++], channels, n);
      if (count == 4) add_cells(cells, count, n, is_max, acc), count = 0;
    });
  }
  add_cells(cells, count, n, is_max, acc);
}

// Consecutive visits that can run as one: tokens j, j + 1, ... of single-cell boxes at
// consecutive cells of the same frames (a temporal mean's tokens, one per grid location), whose
// partial results sit in consecutive slots. Together they read one contiguous span per frame,
// which the hardware prefetcher streams like a plain reduction, instead of one cell at a time.
constexpr int64_t kMaxRun = 256;

inline bool single_cell(const int64_t* row) {
  return row[kRowEnd] - row[kRowBegin] == 1 && row[kColEnd] - row[kColBegin] == 1;
}

template <typename Acc>
int64_t coalesced_run(const Visits& visits, int64_t v, int64_t v_end, const int64_t* plan,
                      const int64_t* frame_table, int64_t width, const LiveTokens<Acc>& live) {
  // Token j has several visits (the caller checked); so must the others of the run.
  const int64_t j = visits.token[v], s0 = visits.slot_begin[v];
  const int64_t frames = visits.slot_end[v] - s0;
  const int64_t* row = plan + j * kPoolPlanColumns;
  const int64_t cell = row[kRowBegin] * width + row[kColBegin];
  const int64_t count = std::min(kMaxRun, v_end - v);
  int64_t m = 1;
  for (; m < count; ++m) {
    const int64_t* next = plan + (j + m) * kPoolPlanColumns;
    const int64_t t0 = visits.slot_begin[v + m];
    bool same = visits.token[v + m] == j + m && visits.slot_end[v + m] - t0 == frames &&
                single_cell(next) && next[kPoolMode] == row[kPoolMode] &&
                next[kRowBegin] * width + next[kColBegin] == cell + m && live.id[j + m] >= 0 &&
                (live.slot(j + m) < 0) == (live.slot(j) < 0) &&
                (live.slot(j) < 0 || live.slot(j + m) == live.slot(j) + m);
    for (int64_t i = 0; same && i < frames; ++i) same = frame_table[t0 + i] == frame_table[s0 + i];
    if (!same) break;
  }
  return m;
}

template <typename T, typename Acc>
void finish_token(const int64_t* row, const Acc* acc, int64_t n, T* dst) {
  if (row[kPoolMode] == kPoolMax) {
    for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<T>(acc[d]);
  } else {
    const Acc cells = static_cast<Acc>(pool_window_size(row));
    for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<T>(acc[d] / cells);
  }
}

// Phase 1: every work item (block range x channel chunk) walks its blocks in order; a visit adds
// a token's cells in the block to its partial result. Tokens whose blocks all lie in the range
// are finished there; the others (a temporal mean over all frames) keep their partial.
// Phase 2 combines those partials in range order. No token is written by two threads, and each
// token's reduction order is fixed by the plan (the ranges do not depend on the thread count).
template <typename T, typename Acc>
void pool_tokens(const T* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
                 int64_t height, int64_t width, int64_t channels, T* out) {
  if (num_tokens == 0 || channels == 0) return;
  const Visits visits = pool_cpu_schedule::visits_by_block(plan, num_tokens, frame_table);
  const Partition part =
      pool_cpu_schedule::partition(visits, plan, channels, at::get_num_threads());
  std::vector<int64_t> visit_range(num_tokens, -1);  // the range of a token's visits, or -2
  std::vector<int64_t> multi_id(num_tokens, -1);     // index among multi-visit tokens, or -1
  for (int64_t b = 0; b < visits.blocks(); ++b) {
    for (int64_t v = visits.begin[b]; v < visits.begin[b + 1]; ++v) {
      const int64_t j = visits.token[v];
      int64_t& range = visit_range[j];
      multi_id[j] = range == -1 ? -1 : 0;  // 0: seen before (numbered below)
      range = range == -1 || range == part.range_of[b] ? part.range_of[b] : -2;
    }
  }
  std::vector<int64_t> spanning;  // tokens visited in several ranges
  int64_t multi_tokens = 0;
  for (int64_t j = 0; j < num_tokens; ++j) {
    if (multi_id[j] == 0) multi_id[j] = multi_tokens++;
    if (visit_range[j] == -2) spanning.push_back(j);
  }
  std::vector<LiveTokens<Acc>> items(part.items());

#pragma omp parallel num_threads(part.threads)
  {
    std::vector<Acc> once(part.chunk);  // for tokens finished in one visit
#pragma omp for schedule(static, 1)
    for (int64_t item = 0; item < part.items(); ++item) {
      const int64_t range = item / part.chunks, d0 = item % part.chunks * part.chunk;
      const int64_t n = std::min(part.chunk, channels - d0);
      const int64_t v0 = visits.begin[part.range_begin[range]];
      const int64_t v1 = visits.begin[part.range_begin[range + 1]];
      LiveTokens<Acc>& live = items[item];
      live = LiveTokens<Acc>(multi_id.data(), multi_tokens, part.chunk);
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t id = multi_id[visits.token[v]];
        if (id >= 0) ++live.visits_left[id];
      }
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t j = visits.token[v];
        const int64_t* row = plan + j * kPoolPlanColumns;
        const int64_t s0 = visits.slot_begin[v], s1 = visits.slot_end[v];
        T* dst = out + j * channels + d0;
        const bool whole = multi_id[j] < 0;  // the token's only visit
        if (whole && pool_window_size(row) == 1) {  // a copy: mean = max = the value
          const T* cell = x + pool_window_row(row, frame_table, height, width, 0) * channels;
          std::memcpy(dst, cell + d0, n * sizeof(T));
          continue;
        }
        const bool is_max = row[kPoolMode] == kPoolMax;
        const int64_t run = !whole && live.width == channels && single_cell(row)
            ? coalesced_run(visits, v, v1, plan, frame_table, width, live) : 1;
        if (run > 1) {
          const bool first_visit = live.slot(j) < 0;
          Acc* acc = first_visit ? live.start_run(j, run) : live.find(j);
          if (first_visit) {
            std::fill(acc, acc + run * n, is_max ? -std::numeric_limits<Acc>::infinity() : Acc(0));
          }
          const int64_t cell = row[kRowBegin] * width + row[kColBegin];
          const T* frames[4];  // the run's span in up to 4 frames at a time
          int count = 0;
          for (int64_t s = s0; s < s1; ++s) {
            frames[count++] = x + ((frame_table[s] * height * width) + cell) * channels;
            if (count == 4) add_cells(frames, count, run * n, is_max, acc), count = 0;
          }
          add_cells(frames, count, run * n, is_max, acc);
          for (int64_t i = 0; i < run; ++i) {
            if (live.last_visit(j + i) && visit_range[j + i] >= 0) {
              finish_token(plan + (j + i) * kPoolPlanColumns, acc + i * n, n,
                           out + (j + i) * channels);
              live.release(j + i);
            }
          }
          v += run - 1;
          continue;
        }
        Acc* acc;
        if (whole || live.slot(j) < 0) {  // the token's first visit here
          acc = whole ? once.data() : live.start(j);
          std::fill(acc, acc + n, is_max ? -std::numeric_limits<Acc>::infinity() : Acc(0));
        } else {
          acc = live.find(j);
        }
        accumulate_visit(x, row, frame_table, s0, s1, height, width, channels, d0, n, is_max,
                         acc);
        if (whole) {
          finish_token(row, acc, n, dst);
        } else if (live.last_visit(j) && visit_range[j] >= 0) {
          finish_token(row, acc, n, dst);
          live.release(j);
        }
      }
    }
    // Phase 2 (after the loop's barrier): partials of tokens over several ranges.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(spanning.size()); ++i) {
      const int64_t j = spanning[i];
      const int64_t* row = plan + j * kPoolPlanColumns;
      const bool is_max = row[kPoolMode] == kPoolMax;
      for (int64_t c = 0; c < part.chunks; ++c) {
        const int64_t d0 = c * part.chunk, n = std::min(part.chunk, channels - d0);
        Acc* acc = once.data();
        bool first = true;
        for (int64_t r = 0; r < part.ranges(); ++r) {
          LiveTokens<Acc>& live = items[r * part.chunks + c];
          if (live.slot(j) < 0) continue;
          const Acc* partial = live.find(j);
          for (int64_t d = 0; d < n; ++d) {
            acc[d] = first    ? partial[d]
                     : is_max ? pool_max(acc[d], partial[d])
                              : acc[d] + partial[d];
          }
          first = false;
        }
        finish_token(row, acc, n, out + j * channels + d0);
      }
    }
  }
}

}  // namespace

void pool_cpu(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
              const int64_t* frame_table, int64_t height, int64_t width, int64_t channels,
              void* out) {
  switch (scalar_type) {
    case kPoolDouble:
      return pool_tokens<double, double>(static_cast<const double*>(x), plan, num_tokens,
                                         frame_table, height, width, channels,
                                         static_cast<double*>(out));
    case kPoolHalf:
      return pool_tokens<c10::Half, float>(static_cast<const c10::Half*>(x), plan, num_tokens,
                                           frame_table, height, width, channels,
                                           static_cast<c10::Half*>(out));
    case kPoolBFloat16:
      return pool_tokens<c10::BFloat16, float>(static_cast<const c10::BFloat16*>(x), plan,
                                               num_tokens, frame_table, height, width, channels,
                                               static_cast<c10::BFloat16*>(out));
    default:
      return pool_tokens<float, float>(static_cast<const float*>(x), plan, num_tokens,
                                       frame_table, height, width, channels,
                                       static_cast<float*>(out));
  }
}

}  // namespace vidcore
