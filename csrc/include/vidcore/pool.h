// Global-local pooling (DESIGN.md op 2): the window math of one output token, shared by the CPU
// twin (csrc/cpu/pool.cpp) and the CUDA kernel (csrc/cuda/pool.cu).
//
// Every view of every video is lowered on the host (vidcore/ops/pool.py) to one plan row per
// output token: a box of frames x rows x cols of the input reduced by mean or max. Frames need not
// be consecutive (uniformly sampled frames), so a row names a slice [frame_begin, frame_end) of a
// frame table of absolute frame indices. Cell k of the box (frames outer, then rows, then columns:
// PyTorch's max-pool scan order, so ties pick the same element) is input row
// frame * H * W + row * W + col of x viewed as [frames, H, W, D].
#pragma once

#include <cstdint>

#include "vidcore/macros.h"

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace vidcore {

enum PoolPlanColumn {
  kFrameBegin = 0, kFrameEnd, kRowBegin, kRowEnd, kColBegin, kColEnd, kPoolMode
};
constexpr int kPoolPlanColumns = 7;
enum PoolMode : int64_t { kPoolAvg = 0, kPoolMax = 1 };

VIDCORE_HD int64_t pool_window_size(const int64_t* plan) {
  return (plan[kFrameEnd] - plan[kFrameBegin]) * (plan[kRowEnd] - plan[kRowBegin]) *
         (plan[kColEnd] - plan[kColBegin]);
}

// Input row (of x viewed as [frames * H * W, D]) of cell k of the plan row's box. A box holds
// fewer than 2^32 cells, so the divisions are 32-bit (several times cheaper on a GPU).
VIDCORE_HD int64_t pool_window_row(const int64_t* plan, const int64_t* frame_table, int64_t height,
                                   int64_t width, int64_t k) {
  const auto rows = static_cast<uint32_t>(plan[kRowEnd] - plan[kRowBegin]);
  const auto cols = static_cast<uint32_t>(plan[kColEnd] - plan[kColBegin]);
  const auto cell = static_cast<uint32_t>(k), in_frame = cell % (rows * cols);
  const int64_t frame = frame_table[plan[kFrameBegin] + cell / (rows * cols)];
  const int64_t row = plan[kRowBegin] + in_frame / cols, col = plan[kColBegin] + in_frame % cols;
  return (frame * height + row) * width + col;
}

// Calls visit(input_row) for every cell of the plan row's box that lies in `frame`, rows then
// columns (scan order), with loops instead of the divisions of pool_window_row.
template <typename Visit>
VIDCORE_HD void pool_for_each_cell_in_frame(const int64_t* plan, int64_t frame, int64_t height,
                                            int64_t width, Visit&& visit) {
  for (int64_t r = plan[kRowBegin]; r < plan[kRowEnd]; ++r) {
    const int64_t first = (frame * height + r) * width;
    for (int64_t c = plan[kColBegin]; c < plan[kColEnd]; ++c) visit(first + c);
  }
}

// Calls visit(input_row) for every cell of the box in scan order: cell k is pool_window_row(k).
template <typename Visit>
VIDCORE_HD void pool_for_each_cell(const int64_t* plan, const int64_t* frame_table,
                                   int64_t height, int64_t width, Visit&& visit) {
  for (int64_t s = plan[kFrameBegin]; s < plan[kFrameEnd]; ++s) {
    pool_for_each_cell_in_frame(plan, frame_table[s], height, width, visit);
  }
}

// Running max that propagates NaN, like torch.max_pool: true when `value` replaces `acc`.
template <typename Acc>
VIDCORE_HD bool pool_max_takes(Acc acc, Acc value) {
  return value > acc || value != value;
}

template <typename Acc>
VIDCORE_HD Acc pool_max(Acc acc, Acc value) {
  return pool_max_takes(acc, value) ? value : acc;
}

// out[j, :] = reduce over the box of plan row j of x; accumulation in Acc (fp32 for 16-bit types).
void pool_cpu(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
              const int64_t* frame_table, int64_t height, int64_t width, int64_t channels,
              void* out);

// grad_x (zeroed, [frames * H * W, D] in Acc = float, or double for double x) += the gradient
// of pool: a mean spreads g / |box| over its box, a max sends g to the cell the forward chose
// (the first maximum in scan order, the last NaN), as torch's max pooling does.
void pool_backward_cpu(const void* grad, const void* x, int scalar_type, const int64_t* plan,
                       int64_t num_tokens, const int64_t* frame_table, int64_t height,
                       int64_t width, int64_t channels, void* grad_x);

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t launch_pool_backward(const void* grad, const void* x, int scalar_type,
                                 const int64_t* plan, int64_t num_tokens,
                                 const int64_t* frame_table, int64_t height, int64_t width,
                                 int64_t channels, float* grad_x, cudaStream_t stream);
// scalar_type: a PoolScalarType other than kPoolDouble
cudaError_t launch_pool(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
                        const int64_t* frame_table, int64_t height, int64_t width,
                        int64_t channels, void* out, cudaStream_t stream);
#endif

// Scalar types understood by pool_cpu / launch_pool (the CPU twin also takes float64).
enum PoolScalarType { kPoolFloat = 0, kPoolHalf = 1, kPoolBFloat16 = 2, kPoolDouble = 3 };

}  // namespace vidcore
