// CPU twin of csrc/cuda/token_pack.cu: pack, unpack and unpack_fill_grad with the index contract
// and the summation order of vidcore/token_pack.h. Index checks ride along with the copies.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "vidcore/token_pack.h"

namespace vidcore {
namespace {

constexpr int64_t kCopyChunkBytes = 1 << 16;  // bytes per task of a row copy

int64_t copy_grain(int64_t row_bytes) {
  return std::max<int64_t>(1, kCopyChunkBytes / std::max<int64_t>(row_bytes, 1));
}

// Lowers *first to `position` if smaller: the first failing position over all tasks, so the
// error names the same index for any thread count.
void record_first(std::atomic<int64_t>* first, int64_t position) {
  int64_t seen = first->load();
  while (position < seen && !first->compare_exchange_weak(seen, position)) {
  }
}

// Sums `rows` rows (leaf(r, buffer) fills buffer with row r as Acc) into out[channels] by the
// pairwise tree of token_pack.h, one row vector at a time.
template <typename Acc, typename Leaf>
void pairwise_sum_rows(int64_t rows, int64_t channels, Leaf&& leaf, Acc* out) {
  std::vector<Acc> partial(65 * channels), leaf_row(channels);  // level k at partial[k * C]
  uint64_t count = 0;
  for (int64_t r = 0; r < rows; ++r, ++count) {
    leaf(r, leaf_row.data());
    int k = 0;
    for (; (count >> k) & 1; ++k) {
      const Acc* left = partial.data() + k * channels;
      for (int64_t c = 0; c < channels; ++c) leaf_row[c] = left[c] + leaf_row[c];
    }
    std::copy(leaf_row.begin(), leaf_row.end(), partial.begin() + k * channels);
  }
  bool any = false;
  std::fill(out, out + channels, Acc(0));
  for (int k = 0; k < 64; ++k) {
    if (!((count >> k) & 1)) continue;
    const Acc* left = partial.data() + k * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = any ? left[c] + out[c] : left[c];
    any = true;
  }
}

template <typename T, typename Acc>
void fill_grad_typed(const T* grad, const int64_t* index, int64_t num_index, int64_t num_rows,
                     int64_t channels, Acc* fill_grad) {
  // Aligned subtrees of kFillGradTile rows in parallel, then the tree over their sums.
  const int64_t tiles = (num_rows + kFillGradTile - 1) / kFillGradTile;
  std::vector<Acc> partials(tiles * channels);
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t first = tile * kFillGradTile;
      int64_t j = lower_bound_row(index, num_index, first);
      auto leaf = [&](int64_t r, Acc* row) {
        const bool kept = j < num_index && index[j] == first + r;
        j += kept;
        const T* src = grad + (first + r) * channels;
        for (int64_t c = 0; c < channels; ++c) row[c] = kept ? Acc(0) : static_cast<Acc>(src[c]);
      };
      pairwise_sum_rows<Acc>(std::min(kFillGradTile, num_rows - first), channels, leaf,
                             partials.data() + tile * channels);
    }
  });
  auto leaf = [&](int64_t tile, Acc* row) {
    std::copy_n(partials.data() + tile * channels, channels, row);
  };
  pairwise_sum_rows<Acc>(tiles, channels, leaf, fill_grad);
}

}  // namespace

int64_t pack_cpu(const void* x, int64_t num_rows, const int64_t* index, int64_t num_index,
                 int64_t row_bytes, void* out) {
  const auto* src = static_cast<const char*>(x);
  auto* dst = static_cast<char*>(out);
  std::atomic<int64_t> first_bad{num_index};
  at::parallel_for(0, num_index, copy_grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = index[i];
      if (row < 0 || row >= num_rows) return record_first(&first_bad, i);
      std::memcpy(dst + i * row_bytes, src + row * row_bytes, row_bytes);
    }
  });
  return first_bad.load() < num_index ? first_bad.load() : -1;
}

int64_t first_unordered_index(const int64_t* index, int64_t num_index, int64_t num_rows) {
  std::atomic<int64_t> first_bad{num_index};
  at::parallel_for(0, num_index, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (!index_ordered_at(index, num_index, num_rows, j)) return record_first(&first_bad, j);
    }
  });
  return first_bad.load() < num_index ? first_bad.load() : -1;
}

void unpack_cpu(const void* packed, const int64_t* index, int64_t num_index, const void* fill,
                int64_t num_rows, int64_t row_bytes, void* out) {
  const auto* src = static_cast<const char*>(packed);
  auto* dst = static_cast<char*>(out);
  at::parallel_for(0, num_rows, copy_grain(row_bytes), [&](int64_t begin, int64_t end) {
    // index is ascending: find this task's first kept row once, then walk both in step.
    int64_t j = lower_bound_row(index, num_index, begin);
    for (int64_t row = begin; row < end; ++row) {
      const bool kept = j < num_index && index[j] == row;
      std::memcpy(dst + row * row_bytes, kept ? src + j * row_bytes : fill, row_bytes);
      j += kept;
    }
  });
}

void unpack_fill_grad_cpu(const void* grad, int scalar_type, const int64_t* index,
                          int64_t num_index, int64_t num_rows, int64_t channels, void* fill_grad) {
  auto* acc = static_cast<float*>(fill_grad);
  switch (scalar_type) {
    case kFillFloat:
      return fill_grad_typed(static_cast<const float*>(grad), index, num_index, num_rows,
                             channels, acc);
    case kFillHalf:
      return fill_grad_typed(static_cast<const c10::Half*>(grad), index, num_index, num_rows,
                             channels, acc);
    case kFillBFloat16:
      return fill_grad_typed(static_cast<const c10::BFloat16*>(grad), index, num_index, num_rows,
                             channels, acc);
    default:
      return fill_grad_typed(static_cast<const double*>(grad), index, num_index, num_rows,
                             channels, static_cast<double*>(fill_grad));
  }
}

}  // namespace vidcore
