// Packing of kept tokens (DESIGN.md op 1): the torch-free entry points of pack, unpack and
// unpack_fill_grad, and the index and summation helpers their CPU twins (csrc/cpu/token_pack.cpp)
// and CUDA kernels (csrc/cuda/token_pack.cu) share. Rows are moved as bytes, so any dtype works.
#pragma once

#include <cstdint>
#include <type_traits>

#include "vidcore/macros.h"

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif
#if defined(__CUDACC__)
#include <initializer_list>
#endif

namespace vidcore {

// First position j in the ascending `index` with index[j] >= row (num_index if none).
VIDCORE_HD int64_t lower_bound_row(const int64_t* index, int64_t num_index, int64_t row) {
  int64_t lo = 0, hi = num_index;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (index[mid] < row) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// unpack's contract on index at position j: strictly ascending, within [0, num_rows).
VIDCORE_HD bool index_ordered_at(const int64_t* index, int64_t num_index, int64_t num_rows,
                                 int64_t j) {
  return index[j] >= 0 && index[j] < num_rows && (j + 1 == num_index || index[j] < index[j + 1]);
}

// The gradient of unpack's fill is a sum over rows, fixed to one order so that every backend and
// thread count gives the same bits: the pairwise sum over the aligned binary tree of the rows
// (leaves in row order; a node is left + right, or left alone when the right half is past the
// end), exactly what repeatedly adding even and odd rows computes (vidcore/reference/token_mask.py).
// Leaves are pushed in order; partial[k] holds a finished subtree of 2^k leaves while bit k of
// count is set. kLevels bounds the leaves at 2^kLevels - 1. Levels is a per-thread array by
// default; it may instead be any type whose operator[] returns Acc& (a thread's column of shared
// memory), and then add() touches only the levels the carry reaches.
template <typename Acc, int kLevels, typename Levels = Acc[kLevels]>
struct PairwiseSum {
  static_assert(kLevels <= 32, "count is 32-bit");
  Levels partial{};
  uint32_t count = 0;

  VIDCORE_HD void add(Acc leaf) {
    if constexpr (std::is_array_v<Levels>) {
      // Fully unrolled, and every level written unconditionally (a select, no early exit), so
      // that every partial[k] has a compile-time index: on the GPU the array then lives in
      // registers instead of a local-memory stack frame, where a run-time index, or stores the
      // compiler merges across branches into one store at a computed address, would put it.
      bool carry = true;  // still carrying into level k: bits 0..k-1 of count are set
      VIDCORE_UNROLL
      for (int k = 0; k < kLevels; ++k) {
        const bool full = (count >> k) & 1;
        const Acc merged = partial[k] + leaf;
        partial[k] = carry && !full ? leaf : partial[k];
        leaf = carry && full ? merged : leaf;
        carry = carry && full;
      }
    } else {
      int k = 0;
      for (; (count >> k) & 1; ++k) leaf = partial[k] + leaf;
      partial[k] = leaf;
    }
    ++count;
  }

  VIDCORE_HD Acc total() const {  // +0 when empty
    Acc acc = Acc(0);
    bool any = false;
    VIDCORE_UNROLL
    for (int k = 0; k < kLevels; ++k) {
      if ((count >> k) & 1) {
        acc = any ? partial[k] + acc : partial[k];
        any = true;
      }
    }
    return acc;
  }
};

// Rows per aligned subtree that one task sums (a power of two, so that the subtrees' sums
// combine by the same tree).
constexpr int64_t kFillGradTile = 1024;

// Scalar types of unpack_fill_grad's gradient (accumulated in float, or double for double).
enum FillGradScalarType { kFillFloat = 0, kFillHalf = 1, kFillBFloat16 = 2, kFillDouble = 3 };

// out[i, :] = x[index[i], :] for rows of row_bytes bytes. Returns the first i whose index[i] lies
// outside [0, num_rows) (nothing is read for it), or -1.
int64_t pack_cpu(const void* x, int64_t num_rows, const int64_t* index, int64_t num_index,
                 int64_t row_bytes, void* out);

// The first j at which index breaks unpack's contract (index_ordered_at), or -1.
int64_t first_unordered_index(const int64_t* index, int64_t num_index, int64_t num_rows);

// out[r, :] = packed[j, :] if index[j] == r, else fill[:]. index must be ordered (see above).
void unpack_cpu(const void* packed, const int64_t* index, int64_t num_index, const void* fill,
                int64_t num_rows, int64_t row_bytes, void* out);

// fill_grad[c] = the pairwise sum over rows r not in index of grad[r, c] (rows in index add +0),
// in float (double for double grad). index must be ordered.
void unpack_fill_grad_cpu(const void* grad, int scalar_type, const int64_t* index,
                          int64_t num_index, int64_t num_rows, int64_t channels, void* fill_grad);

#if defined(__CUDACC__)
// Calls fn(Vec{}) with the widest of 16/8/4/2/1-byte types that divides row_bytes and aligns
// every pointer: a 2048-byte bf16 row moves as 128 x 16-byte loads.
template <typename Fn>
void with_row_vector(int64_t row_bytes, std::initializer_list<const void*> pointers, Fn fn) {
  auto fits = [&](int64_t width) {
    if (row_bytes % width) return false;
    for (const void* p : pointers) {
      if (reinterpret_cast<uintptr_t>(p) % width) return false;
    }
    return true;
  };
  if (fits(16)) fn(uint4{});
  else if (fits(8)) fn(uint2{});
  else if (fits(4)) fn(uint32_t{});
  else if (fits(2)) fn(uint16_t{});
  else fn(uint8_t{});
}
#endif

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
// The kernels assert the index contract on the device (no host sync); a violation surfaces as
// cudaErrorAssert. `partials` of unpack_fill_grad: ceil(num_rows / kFillGradTile) * channels
// accumulators of scratch.
cudaError_t launch_pack(const void* x, int64_t num_rows, const int64_t* index, int64_t num_index,
                        int64_t row_bytes, void* out, cudaStream_t stream);
cudaError_t launch_unpack(const void* packed, const int64_t* index, int64_t num_index,
                          const void* fill, int64_t num_rows, int64_t row_bytes, void* out,
                          cudaStream_t stream);
cudaError_t launch_unpack_fill_grad(const void* grad, int scalar_type, const int64_t* index,
                                    int64_t num_index, int64_t num_rows, int64_t channels,
                                    void* partials, void* fill_grad, cudaStream_t stream);
#endif

}  // namespace vidcore
