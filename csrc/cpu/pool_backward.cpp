// CPU twin of csrc/cuda/pool_backward.cu: the gradient of pool as a gather (vidcore/pool.h).
// Every input element sums the plan rows that read it in one fixed order (frame-table slots
// ascending, then rows ascending), the order the CUDA kernel uses, so that the result depends
// neither on the thread count nor on the device. Threads own (frame, channel slice) items.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "pool_schedule.h"
#include "vidcore/pool.h"

namespace vidcore {
namespace {

using pool_cpu_schedule::kSerialWork;

// picked[j * channels + d]: the box index of the cell max row j picked in channel d (torch's:
// the last NaN, else the first maximum in scan order). Rows of a mean are left alone.
template <typename T, typename Acc>
std::vector<int32_t> picked_cells(const T* x, const int64_t* plan, int64_t num_tokens,
                                  const int64_t* frame_table, int64_t height, int64_t width,
                                  int64_t channels) {
  int64_t max_cells = 0;  // cells read by max rows
  for (int64_t j = 0; j < num_tokens; ++j) {
    const int64_t* row = plan + j * kPoolPlanColumns;
    if (row[kPoolMode] == kPoolMax) max_cells += pool_window_size(row);
  }
  if (max_cells == 0) return {};
  std::vector<int32_t> picked(num_tokens * channels);
  const int64_t grain = std::max<int64_t>(1, kSerialWork * num_tokens / (max_cells * channels));
  at::parallel_for(0, num_tokens, grain, [&](int64_t j0, int64_t j1) {
    std::vector<Acc> best(channels);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t* row = plan + j * kPoolPlanColumns;
      if (row[kPoolMode] != kPoolMax) continue;
      int32_t* pick = picked.data() + j * channels;
      std::fill(best.begin(), best.end(), -std::numeric_limits<Acc>::infinity());
      std::fill(pick, pick + channels, 0);
      int32_t k = 0;
      pool_for_each_cell(row, frame_table, height, width, [&](int64_t cell) {
        const T* value = x + cell * channels;
        for (int64_t d = 0; d < channels; ++d) {
          const Acc v = static_cast<Acc>(value[d]);
          if (pool_max_takes(best[d], v)) best[d] = v, pick[d] = k;
        }
        ++k;
      });
    }
  });
  return picked;
}

template <typename T, typename Acc>
void pool_backward_tokens(const T* grad, const T* x, const int64_t* plan, int64_t num_tokens,
                          const int64_t* frame_table, int64_t table_size, int64_t frames,
                          int64_t height, int64_t width, int64_t channels, T* grad_x) {
  if (frames * height * width == 0 || channels == 0) return;
  const std::vector<int32_t> picked =
      picked_cells<T, Acc>(x, plan, num_tokens, frame_table, height, width, channels);
  // The slots naming each frame, ascending (a counting sort), and the rows reading each slot.
  std::vector<int64_t> slot_begin(frames + 1, 0), slots(table_size);
  for (int64_t s = 0; s < table_size; ++s) ++slot_begin[frame_table[s] + 1];
  for (int64_t f = 0; f < frames; ++f) slot_begin[f + 1] += slot_begin[f];
  std::vector<int64_t> next(slot_begin.begin(), slot_begin.end() - 1);
  for (int64_t s = 0; s < table_size; ++s) slots[next[frame_table[s]]++] = s;
  std::vector<int64_t> readers_lo(table_size), readers_hi(table_size);
  for (int64_t s = 0; s < table_size; ++s) {
    pool_slot_readers(plan, num_tokens, s, &readers_lo[s], &readers_hi[s]);
  }
  // Enough channel slices for every thread when frames are few; whole rows otherwise.
  const int64_t threads = at::get_num_threads();
  const int64_t slices = std::min<int64_t>(channels, (threads + frames - 1) / frames);
  const int64_t chunk = (channels + slices - 1) / slices;
  const int64_t per_item = std::max<int64_t>(1, height * width * chunk);
  at::parallel_for(0, frames * slices, std::max<int64_t>(1, kSerialWork / per_item),
                   [&](int64_t item0, int64_t item1) {
    std::vector<Acc> acc(width * chunk), share(chunk);
    for (int64_t item = item0; item < item1; ++item) {
      const int64_t f = item / slices, d0 = item % slices * chunk;
      const int64_t n = std::min(chunk, channels - d0);
      for (int64_t r = 0; r < height; ++r) {
        std::fill(acc.begin(), acc.begin() + width * n, Acc(0));
        for (int64_t i = slot_begin[f]; i < slot_begin[f + 1]; ++i) {
          const int64_t s = slots[i];
          int64_t a, b;
          pool_row_readers(plan, readers_lo[s], readers_hi[s], r, &a, &b);
          for (int64_t j = a; j < b; ++j) {
            const int64_t* row = plan + j * kPoolPlanColumns;
            const T* g = grad + j * channels + d0;
            if (row[kPoolMode] != kPoolMax) {  // a mean: g / |box| on every cell of the window
              const Acc cells = static_cast<Acc>(pool_window_size(row));
              for (int64_t d = 0; d < n; ++d) share[d] = static_cast<Acc>(g[d]) / cells;
              for (int64_t c = row[kColBegin]; c < row[kColEnd]; ++c) {
                Acc* __restrict__ dst = acc.data() + c * n;
                for (int64_t d = 0; d < n; ++d) dst[d] += share[d];
              }
              continue;
            }
            const int32_t* pick = picked.data() + j * channels + d0;
            for (int64_t d = 0; d < n; ++d) {  // a max: g on the cell it picked, if here
              const int64_t c = pool_picked_col(row, pick[d], s, r);
              if (c >= 0) acc[c * n + d] += static_cast<Acc>(g[d]);
            }
          }
        }
        T* out = grad_x + (f * height + r) * width * channels + d0;
        for (int64_t c = 0; c < width; ++c) {
          for (int64_t d = 0; d < n; ++d) out[c * channels + d] = static_cast<T>(acc[c * n + d]);
        }
      }
    }
  });
}

}  // namespace

void pool_backward_cpu(const void* grad, const void* x, int scalar_type, const int64_t* plan,
                       int64_t num_tokens, const int64_t* frame_table, int64_t table_size,
                       int64_t frames, int64_t height, int64_t width, int64_t channels,
                       void* grad_x) {
  switch (scalar_type) {
    case kPoolDouble:
      return pool_backward_tokens<double, double>(
          static_cast<const double*>(grad), static_cast<const double*>(x), plan, num_tokens,
          frame_table, table_size, frames, height, width, channels, static_cast<double*>(grad_x));
    case kPoolHalf:
      return pool_backward_tokens<c10::Half, float>(
          static_cast<const c10::Half*>(grad), static_cast<const c10::Half*>(x), plan,
          num_tokens, frame_table, table_size, frames, height, width, channels,
          static_cast<c10::Half*>(grad_x));
    case kPoolBFloat16:
      return pool_backward_tokens<c10::BFloat16, float>(
          static_cast<const c10::BFloat16*>(grad), static_cast<const c10::BFloat16*>(x), plan,
          num_tokens, frame_table, table_size, frames, height, width, channels,
          static_cast<c10::BFloat16*>(grad_x));
    default:
      return pool_backward_tokens<float, float>(
          static_cast<const float*>(grad), static_cast<const float*>(x), plan, num_tokens,
          frame_table, table_size, frames, height, width, channels, static_cast<float*>(grad_x));
  }
}

}  // namespace vidcore
