// Sequence assembly (DESIGN.md op 4): which input row each output row of interleave_pack comes
// from, shared by the CPU twin (csrc/cpu/interleave_pack.cpp) and the CUDA kernel
// (csrc/cuda/interleave_pack.cu), plus the table check of the CPU entry point.
//
// The host (vidcore/ops/interleave_pack.py) lowers the segments to a table with one row per
// segment, in output order (columns below; vidcore/reference/interleave_pack.py is the spec).
// Segment s covers output rows [dst_start_s, dst_start_{s+1}) (the last one ends at `total`).
// Output row r of a text segment is text row text_before + r - dst_start; of a visual segment,
// visual row r - text_before. Every text and visual row is used exactly once, so the backward
// is the same walk with the copy reversed.
#pragma once

#include <cstdint>

#include "vidcore/macros.h"

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace vidcore {

enum InterleaveColumn { kDstStart = 0, kSegmentKind = 1, kTextBefore = 2, kSeqStart = 3 };
constexpr int kInterleaveColumns = 4;
enum SegmentKind : int64_t { kTextSegment = 0, kVisualSegment = 1 };
constexpr int64_t kIgnoreIndex = -100;  // label of rows without a loss

struct InterleaveSizes {
  int64_t num_segments;  // rows of the table
  int64_t total;         // output rows = total_text + total_visual
  int64_t total_text;
  int64_t total_visual;
};

// The segment holding output row `row`: the last s with dst_start_s <= row (-1 if none).
VIDCORE_HD int64_t segment_of_row(const int64_t* table, int64_t num_segments, int64_t row) {
  int64_t lo = 0, hi = num_segments;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (table[mid * kInterleaveColumns + kDstStart] <= row) lo = mid + 1; else hi = mid;
  }
  return lo - 1;
}

// Text rows before output row `row` of `segment` (its table row): the text row it reads when
// the segment is text. A visual row reads visual row `row - text_rows_before`.
VIDCORE_HD int64_t text_rows_before(const int64_t* segment, int64_t row) {
  const bool text = segment[kSegmentKind] == kTextSegment;
  return segment[kTextBefore] + (text ? row - segment[kDstStart] : 0);
}

// End row (exclusive) of segment s.
VIDCORE_HD int64_t segment_end(const int64_t* table, InterleaveSizes sizes, int64_t s) {
  return s + 1 < sizes.num_segments ? table[(s + 1) * kInterleaveColumns + kDstStart]
                                    : sizes.total;
}

// Why the table is not one the host could have built for these sizes, or nullptr: the first
// segment starts at row 0, starts ascend to at most total, kinds are 0 or 1, text_before counts
// the text rows before each segment, the text segments cover total_text rows, and
// 0 <= seq_start <= dst_start. Then every index the kernels compute is in range and each input
// row is used once. (Checked on the host by the CPU entry point; the CUDA kernel asserts the same
// per row on the device, without a host sync.)
inline const char* interleave_table_error(const int64_t* table, InterleaveSizes sizes) {
  if (sizes.total != sizes.total_text + sizes.total_visual) return "total != text + visual rows";
  if (sizes.num_segments == 0) return sizes.total == 0 ? nullptr : "no segments for total > 0";
  int64_t text_rows = 0;
  for (int64_t s = 0; s < sizes.num_segments; ++s) {
    const int64_t* segment = table + s * kInterleaveColumns;
    const int64_t start = segment[kDstStart], end = segment_end(table, sizes, s);
    if (s == 0 && start != 0) return "the first segment must start at row 0";
    if (end < start) return "segment starts must ascend and be <= total";
    const int64_t kind = segment[kSegmentKind];
    if (kind != kTextSegment && kind != kVisualSegment) return "segment kinds must be 0 or 1";
    if (segment[kTextBefore] != text_rows) return "text_before must count the earlier text rows";
    if (segment[kSeqStart] < 0 || segment[kSeqStart] > start) {
      return "seq_start must be in [0, dst_start]";
    }
    if (kind == kTextSegment) text_rows += end - start;
  }
  return text_rows == sizes.total_text ? nullptr : "text segments must cover the text rows";
}

// Forward: embeds[r] = text or visual row of r; position_ids[r] = r - seq_start;
// labels[r] = text_labels[text row] (kIgnoreIndex at visual rows, or everywhere without labels);
// visual_index[visual row of r] = r.
struct InterleaveOutputs {
  void* embeds;            // total x row_bytes
  int64_t* position_ids;   // total
  int64_t* labels;         // total
  int64_t* visual_index;   // total_visual
};

void interleave_pack_cpu(const void* text, const void* visual, const int64_t* text_labels,
                         const int64_t* table, InterleaveSizes sizes, int64_t row_bytes,
                         InterleaveOutputs out);

// Backward: grad_text / grad_visual rows = grad_embeds rows of the rows they were copied to.
void interleave_pack_backward_cpu(const void* grad_embeds, const int64_t* table,
                                  InterleaveSizes sizes, int64_t row_bytes, void* grad_text,
                                  void* grad_visual);

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t launch_interleave_pack(const void* text, const void* visual,
                                   const int64_t* text_labels, const int64_t* table,
                                   InterleaveSizes sizes, int64_t row_bytes,
                                   InterleaveOutputs out, cudaStream_t stream);
cudaError_t launch_interleave_pack_backward(const void* grad_embeds, const int64_t* table,
                                            InterleaveSizes sizes, int64_t row_bytes,
                                            void* grad_text, void* grad_visual,
                                            cudaStream_t stream);
#endif

}  // namespace vidcore
