// Global-local pooling (DESIGN.md op 2): the plan contract and window math of one output token,
// shared by the CPU twin (csrc/cpu/pool.cpp) and the CUDA kernels (csrc/cuda/pool*.cu).
//
// Every view of every video is lowered on the host (vidcore/ops/pool_views.py) to one plan row
// per output token: a box of frames x rows x cols of the input reduced by mean or max. Frames need
// not be consecutive (uniformly sampled frames), so a row names a slice [frame_begin, frame_end)
// of a frame table of absolute frame indices. Cell k of the box (frames outer, then rows, then
// columns: PyTorch's max-pool scan order) is input row frame * H * W + row * W + col of x viewed
// as [frames, H, W, D]. A max picks torch's cell: the last NaN of the box, else its first maximum.
//
// The plan contract. Rows come from vidcore's lowering, or from anyone who calls
// torch.ops.vidcore.pool directly, so every kernel checks them: the CPU bindings
// (csrc/pool_op.cpp) raise a RuntimeError, the CUDA kernels assert on the device, and the
// reference (vidcore/reference/pool.py::check_plan) does either. A plan is valid when
//   - every row has 0 <= frame_begin < frame_end <= table size, 0 <= row_begin < row_end <= H,
//     0 <= col_begin < col_end <= W, mode kPoolAvg or kPoolMax, and fewer than 2^31 cells;
//   - every frame-table entry lies in [0, frames of x);
//   - rows come in frame-slice order: each row's slice equals the previous row's or begins at or
//     after its end, and rows sharing a slice have non-decreasing row_begin and row_end.
// The order (which the lowering produces: video by video, view by view, temporal window by
// window, windows in raster order) lets the backward find the readers of an input row by binary
// search, so that it is a gather: deterministic, with no atomics.
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
constexpr int64_t kPoolBoxLimit = int64_t(1) << 31;  // cells per box (32-bit box indices)

// What is wrong with a plan row (kPlanOk: nothing); messages in csrc/pool_op.cpp.
enum PoolPlanProblem : int {
  kPlanOk = 0, kPlanFrameSlice, kPlanRows, kPlanCols, kPlanMode, kPlanBoxTooLarge,
  kPlanSliceOrder, kPlanWindowOrder
};

// The contract for row `row`, given the previous row (nullptr for the first).
VIDCORE_HD int pool_plan_row_problem(const int64_t* row, const int64_t* previous,
                                     int64_t table_size, int64_t height, int64_t width) {
  const int64_t fb = row[kFrameBegin], fe = row[kFrameEnd];
  if (!(0 <= fb && fb < fe && fe <= table_size)) return kPlanFrameSlice;
  if (!(0 <= row[kRowBegin] && row[kRowBegin] < row[kRowEnd] && row[kRowEnd] <= height)) {
    return kPlanRows;
  }
  if (!(0 <= row[kColBegin] && row[kColBegin] < row[kColEnd] && row[kColEnd] <= width)) {
    return kPlanCols;
  }
  if (row[kPoolMode] != kPoolAvg && row[kPoolMode] != kPoolMax) return kPlanMode;
  // Each factor is checked first so that no product overflows int64 (an x with D = 0 may
  // declare any H and W).
  const int64_t frames = fe - fb, rows = row[kRowEnd] - row[kRowBegin];
  const int64_t cols = row[kColEnd] - row[kColBegin];
  if (frames >= kPoolBoxLimit || rows >= kPoolBoxLimit || cols >= kPoolBoxLimit ||
      rows * cols >= kPoolBoxLimit || frames * (rows * cols) >= kPoolBoxLimit) {
    return kPlanBoxTooLarge;
  }
  if (previous != nullptr) {
    const bool same = previous[kFrameBegin] == fb && previous[kFrameEnd] == fe;
    if (!same && fb < previous[kFrameEnd]) return kPlanSliceOrder;
    if (same && (row[kRowBegin] < previous[kRowBegin] || row[kRowEnd] < previous[kRowEnd])) {
      return kPlanWindowOrder;
    }
  }
  return kPlanOk;
}

VIDCORE_HD int64_t pool_window_size(const int64_t* plan) {
  return (plan[kFrameEnd] - plan[kFrameBegin]) * (plan[kRowEnd] - plan[kRowBegin]) *
         (plan[kColEnd] - plan[kColBegin]);
}

// Input row (of x viewed as [frames * H * W, D]) of cell k of the plan row's box. A box holds
// fewer than 2^31 cells, so the divisions are 32-bit (several times cheaper on a GPU).
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

// Running max that propagates NaN, like torch's max pooling: true when `value`, met after the
// cells that gave `acc`, replaces it (so ties keep the first maximum, and the last NaN wins).
template <typename Acc>
VIDCORE_HD bool pool_max_takes(Acc acc, Acc value) {
  return value > acc || value != value;
}

template <typename Acc>
VIDCORE_HD Acc pool_max(Acc acc, Acc value) {
  return pool_max_takes(acc, value) ? value : acc;
}

// Whether candidate b (value, box index) beats a when they were found in any order: the NaN with
// the larger index, else the larger value, else (equal values) the smaller index. Combining
// partial results with it gives what one scan in box order (pool_max_takes) gives.
template <typename Acc>
VIDCORE_HD bool pool_max_beats(Acc a, int64_t a_index, Acc b, int64_t b_index) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return b_nan && (!a_nan || b_index > a_index);
  return b > a || (b == a && b_index < a_index);
}

// First row j in [lo, hi) with plan[j][column] > value, for a column non-decreasing there.
VIDCORE_HD int64_t pool_first_above(const int64_t* plan, int64_t lo, int64_t hi, int column,
                                    int64_t value) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (plan[mid * kPoolPlanColumns + column] > value) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// The rows reading frame-table slot `slot` are [*lo, *hi): they share one frame slice (the
// order of the plan contract makes frame_begin and frame_end non-decreasing).
VIDCORE_HD void pool_slot_readers(const int64_t* plan, int64_t num_tokens, int64_t slot,
                                  int64_t* lo, int64_t* hi) {
  *lo = pool_first_above(plan, 0, num_tokens, kFrameEnd, slot);
  *hi = pool_first_above(plan, *lo, num_tokens, kFrameBegin, slot);
}

// Of the rows [lo, hi) sharing a slice, those whose window covers grid row r: [*a, *b).
VIDCORE_HD void pool_row_readers(const int64_t* plan, int64_t lo, int64_t hi, int64_t r,
                                 int64_t* a, int64_t* b) {
  *a = pool_first_above(plan, lo, hi, kRowEnd, r);
  *b = pool_first_above(plan, *a, hi, kRowBegin, r);
}

// The column of the cell that box index k names, if it lies in frame-table slot `slot` and grid
// row r; else -1. The backward of a max adds g there.
VIDCORE_HD int64_t pool_picked_col(const int64_t* plan, int32_t k, int64_t slot, int64_t r) {
  const auto cols = static_cast<uint32_t>(plan[kColEnd] - plan[kColBegin]);
  const auto area = static_cast<uint32_t>(plan[kRowEnd] - plan[kRowBegin]) * cols;
  const auto cell = static_cast<uint32_t>(k);
  if (plan[kFrameBegin] + cell / area != slot || plan[kRowBegin] + cell % area / cols != r) {
    return -1;
  }
  return plan[kColBegin] + cell % cols;
}

// out[j, :] = reduce over the box of plan row j of x; accumulation in Acc (fp32 for 16-bit types).
// The reduction order depends on the plan only, never on the thread count.
void pool_cpu(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
              const int64_t* frame_table, int64_t height, int64_t width, int64_t channels,
              void* out);

// grad_x [frames, H, W, D] (x's dtype, every element written) = the gradient of pool, as a
// gather: input element e sums, over the frame-table slots naming its frame in ascending order
// and then the rows reading it in ascending order, g / |box| for a mean and g for a max that
// picked e. The same order on the CPU and the GPU, whatever the threads.
void pool_backward_cpu(const void* grad, const void* x, int scalar_type, const int64_t* plan,
                       int64_t num_tokens, const int64_t* frame_table, int64_t table_size,
                       int64_t frames, int64_t height, int64_t width, int64_t channels,
                       void* grad_x);

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
// scalar_type: a PoolScalarType other than kPoolDouble. `picked` is an int32 workspace of
// num_tokens * channels elements (the box index each max row picked per channel).
cudaError_t launch_pool_backward(const void* grad, const void* x, int scalar_type,
                                 const int64_t* plan, int64_t num_tokens,
                                 const int64_t* frame_table, int64_t table_size, int64_t frames,
                                 int64_t height, int64_t width, int64_t channels,
                                 int32_t* picked, void* grad_x, cudaStream_t stream);
cudaError_t launch_pool(const void* x, int scalar_type, const int64_t* plan, int64_t num_tokens,
                        const int64_t* frame_table, int64_t table_size, int64_t frames,
                        int64_t height, int64_t width, int64_t channels, void* out,
                        cudaStream_t stream);
#endif

// Scalar types understood by pool_cpu / launch_pool (the CPU twin also takes float64).
enum PoolScalarType { kPoolFloat = 0, kPoolHalf = 1, kPoolBFloat16 = 2, kPoolDouble = 3 };

}  // namespace vidcore
