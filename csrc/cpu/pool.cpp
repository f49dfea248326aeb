// CPU twin of csrc/cuda/pool.cu: the same plan rows and window math (vidcore/pool.h), parallel
// over output tokens, channels innermost so every input row is read contiguously.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "vidcore/pool.h"

namespace vidcore {
namespace {

template <typename T, typename Acc>
void pool_tokens(const T* x, const int64_t* plan, int64_t num_tokens, const int64_t* frame_table,
                 int64_t height, int64_t width, int64_t channels, T* out) {
  // Token costs differ by orders of magnitude (a copied cell vs a mean over every frame), so
  // tokens are handed out dynamically rather than in one static range per thread.
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<Acc> acc(channels);
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < num_tokens; ++j) {
      const int64_t* row = plan + j * kPoolPlanColumns;
      const bool is_max = row[kPoolMode] == kPoolMax;
      const int64_t cells = pool_window_size(row);
      if (cells == 1) {  // a copied token (no pooling): mean and max of one value are the value
        std::memcpy(out + j * channels,
                    x + pool_window_row(row, frame_table, height, width, 0) * channels,
                    channels * sizeof(T));
        continue;
      }
      std::fill(acc.begin(), acc.end(),
                is_max ? -std::numeric_limits<Acc>::infinity() : Acc(0));
      // The mode test stays outside the channel loops so that both vectorise.
      Acc* __restrict__ sums = acc.data();
      for (int64_t k = 0; k < cells; ++k) {
        const T* __restrict__ cell =
            x + pool_window_row(row, frame_table, height, width, k) * channels;
        if (is_max) {
          for (int64_t d = 0; d < channels; ++d) sums[d] = pool_max(sums[d], Acc(cell[d]));
        } else {
          for (int64_t d = 0; d < channels; ++d) sums[d] += Acc(cell[d]);
        }
      }
      T* dst = out + j * channels;
      for (int64_t d = 0; d < channels; ++d) {
        dst[d] = static_cast<T>(is_max ? acc[d] : acc[d] / static_cast<Acc>(cells));
      }
    }
  }
}

// Threads own channel slices, so overlapping windows of different views never race.
template <typename T, typename Acc>
void pool_backward_tokens(const T* grad, const T* x, const int64_t* plan, int64_t num_tokens,
                          const int64_t* frame_table, int64_t height, int64_t width,
                          int64_t channels, Acc* grad_x) {
  at::parallel_for(0, channels, 16, [&](int64_t d0, int64_t d1) {
    for (int64_t j = 0; j < num_tokens; ++j) {
      const int64_t* row = plan + j * kPoolPlanColumns;
      const int64_t cells = pool_window_size(row);
      for (int64_t d = d0; d < d1; ++d) {
        const Acc g = static_cast<Acc>(grad[j * channels + d]);
        if (row[kPoolMode] != kPoolMax) {
          for (int64_t k = 0; k < cells; ++k) {
            grad_x[pool_window_row(row, frame_table, height, width, k) * channels + d] +=
                g / static_cast<Acc>(cells);
          }
          continue;
        }
        Acc best = -std::numeric_limits<Acc>::infinity();
        int64_t best_row = pool_window_row(row, frame_table, height, width, 0);
        for (int64_t k = 0; k < cells; ++k) {
          const int64_t r = pool_window_row(row, frame_table, height, width, k);
          const Acc value = static_cast<Acc>(x[r * channels + d]);
          if (pool_max_takes(best, value)) best = value, best_row = r;
        }
        if (cells > 0) grad_x[best_row * channels + d] += g;
      }
    }
  });
}

}  // namespace

void pool_backward_cpu(const void* grad, const void* x, int scalar_type, const int64_t* plan,
                       int64_t num_tokens, const int64_t* frame_table, int64_t height,
                       int64_t width, int64_t channels, void* grad_x) {
  switch (scalar_type) {
    case kPoolDouble:
      return pool_backward_tokens<double, double>(
          static_cast<const double*>(grad), static_cast<const double*>(x), plan, num_tokens,
          frame_table, height, width, channels, static_cast<double*>(grad_x));
    case kPoolHalf:
      return pool_backward_tokens<c10::Half, float>(
          static_cast<const c10::Half*>(grad), static_cast<const c10::Half*>(x), plan,
          num_tokens, frame_table, height, width, channels, static_cast<float*>(grad_x));
    case kPoolBFloat16:
      return pool_backward_tokens<c10::BFloat16, float>(
          static_cast<const c10::BFloat16*>(grad), static_cast<const c10::BFloat16*>(x), plan,
          num_tokens, frame_table, height, width, channels, static_cast<float*>(grad_x));
    default:
      return pool_backward_tokens<float, float>(
          static_cast<const float*>(grad), static_cast<const float*>(x), plan, num_tokens,
          frame_table, height, width, channels, static_cast<float*>(grad_x));
  }
}

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
