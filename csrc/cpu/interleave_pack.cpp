// CPU twin of csrc/cuda/interleave_pack.cu: the same segment lookup from
// vidcore/interleave_pack.h. Rows are split into chunks; each chunk finds its first segment by
// binary search, then walks the segments, so every (segment, chunk) piece is one memcpy (a
// segment's rows are contiguous in its source and in the output).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "vidcore/interleave_pack.h"

namespace vidcore {
namespace {

int64_t grain_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1));
}

// Calls piece(segment, first_row, end_row) for every maximal run of output rows in [begin, end)
// that lies in one segment, in order.
template <typename Piece>
void for_each_piece(const int64_t* table, InterleaveSizes sizes, int64_t begin, int64_t end,
                    Piece&& piece) {
  for (int64_t s = segment_of_row(table, sizes.num_segments, begin), row = begin; row < end;
       ++s) {
    const int64_t stop = std::min(end, segment_end(table, sizes, s));
    if (stop > row) piece(table + s * kInterleaveColumns, row, stop);  // skips empty segments
    row = std::max(row, stop);
  }
}

// Byte offset of output row `row`'s source in text (is_text) or visual.
int64_t source_offset(const int64_t* segment, int64_t row, int64_t row_bytes, bool* is_text) {
  *is_text = segment[kSegmentKind] == kTextSegment;
  const int64_t text_before = text_rows_before(segment, row);
  return (*is_text ? text_before : row - text_before) * row_bytes;
}

}  // namespace

void interleave_pack_cpu(const void* text, const void* visual, const int64_t* text_labels,
                         const int64_t* table, InterleaveSizes sizes, int64_t row_bytes,
                         InterleaveOutputs out) {
  const auto* text_bytes = static_cast<const char*>(text);
  const auto* visual_bytes = static_cast<const char*>(visual);
  auto* embeds = static_cast<char*>(out.embeds);
  at::parallel_for(0, sizes.total, grain_rows(row_bytes), [&](int64_t begin, int64_t end) {
    for_each_piece(table, sizes, begin, end, [&](const int64_t* segment, int64_t first,
                                                 int64_t stop) {
      bool is_text = false;
      const int64_t offset = source_offset(segment, first, row_bytes, &is_text);
      if (row_bytes > 0) {  // (an empty tensor's data pointer may be null)
        std::memcpy(embeds + first * row_bytes, (is_text ? text_bytes : visual_bytes) + offset,
                    (stop - first) * row_bytes);
      }
      const int64_t text_row = text_rows_before(segment, first);
      for (int64_t row = first; row < stop; ++row) {
        out.position_ids[row] = row - segment[kSeqStart];
        const bool labelled = is_text && text_labels != nullptr;
        out.labels[row] = labelled ? text_labels[text_row + row - first] : kIgnoreIndex;
        if (!is_text) out.visual_index[row - text_row] = row;
      }
    });
  });
}

void interleave_pack_backward_cpu(const void* grad_embeds, const int64_t* table,
                                  InterleaveSizes sizes, int64_t row_bytes, void* grad_text,
                                  void* grad_visual) {
  const auto* grad = static_cast<const char*>(grad_embeds);
  auto* text_bytes = static_cast<char*>(grad_text);
  auto* visual_bytes = static_cast<char*>(grad_visual);
  at::parallel_for(0, sizes.total, grain_rows(row_bytes), [&](int64_t begin, int64_t end) {
    for_each_piece(table, sizes, begin, end, [&](const int64_t* segment, int64_t first,
                                                 int64_t stop) {
      bool is_text = false;
      const int64_t offset = source_offset(segment, first, row_bytes, &is_text);
      if (row_bytes > 0) {
        std::memcpy((is_text ? text_bytes : visual_bytes) + offset, grad + first * row_bytes,
                    (stop - first) * row_bytes);
      }
    });
  });
}

}  // namespace vidcore
