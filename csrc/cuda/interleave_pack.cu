// interleave_pack on the GPU: one launch each way. A group of `lanes` threads moves one output
// row with the widest aligned vector type; every lane finds the row's segment by binary search
// over the (cached) segment table, lane 0 also writes the row's position id, label and visual
// index. The table is checked on the device as it is read (no host sync): an inconsistent table
// (one the host never builds, e.g. from a direct torch.ops call) stops the kernel with a
// device-side assert instead of reading or writing out of bounds.
#include <cassert>
#include <cstdint>

#include "vidcore/interleave_pack.h"
#include "vidcore/token_pack.h"  // with_row_vector: the widest aligned vector type of a row

// Stays on in release builds, where NDEBUG turns assert() off: a failed check ends the kernel
// with cudaErrorAssert ("device-side assert triggered"), as torch's CUDA_KERNEL_ASSERT does
// (and declares __assert_fail the same way, since <cassert> does not under NDEBUG).
extern "C" {
[[noreturn]] __host__ __device__ void __assert_fail(const char* assertion, const char* file,
                                                    unsigned int line,
                                                    const char* function) noexcept;
}
#define VIDCORE_DEVICE_CHECK(cond) \
  do {                             \
    if (!(cond)) __assert_fail(#cond, __FILE__, __LINE__, __func__); \
  } while (0)

namespace vidcore {
namespace {

constexpr int kThreads = 256;

struct RowSource {
  bool is_text;
  int64_t index;      // row of text (is_text) or of visual
  int64_t seq_start;  // first output row of the row's sample
};

// Where output row `row` comes from. Every lane checks the indices it will use; lane 0 also
// checks that the table counts text rows consistently with the previous row's segment (so each
// input row is used exactly once) and that position ids are >= 0.
__device__ RowSource locate_row(const int64_t* __restrict__ table,  // segments x 4
                                InterleaveSizes sizes, int64_t row, bool check_table) {
  const int64_t s = segment_of_row(table, sizes.num_segments, row);
  VIDCORE_DEVICE_CHECK(s >= 0);
  const int64_t* segment = table + s * kInterleaveColumns;
  const int64_t kind = segment[kSegmentKind];
  VIDCORE_DEVICE_CHECK(kind == kTextSegment || kind == kVisualSegment);
  const bool is_text = kind == kTextSegment;
  const int64_t text_before = text_rows_before(segment, row);
  const int64_t index = is_text ? text_before : row - text_before;
  VIDCORE_DEVICE_CHECK(index >= 0 && index < (is_text ? sizes.total_text : sizes.total_visual));
  if (check_table) {
    VIDCORE_DEVICE_CHECK(row < segment_end(table, sizes, s));
    VIDCORE_DEVICE_CHECK(segment[kSeqStart] >= 0 && segment[kSeqStart] <= row);
    int64_t expected = 0;  // text rows before `row`, from the previous row's segment
    if (row > 0) {
      const int64_t p = segment_of_row(table, sizes.num_segments, row - 1);
      VIDCORE_DEVICE_CHECK(p >= 0);
      const int64_t* previous = table + p * kInterleaveColumns;
      expected = text_rows_before(previous, row - 1) + (previous[kSegmentKind] == kTextSegment);
    }
    VIDCORE_DEVICE_CHECK(text_before == expected);
    if (row == sizes.total - 1) VIDCORE_DEVICE_CHECK(text_before + is_text == sizes.total_text);
  }
  return {is_text, index, segment[kSeqStart]};
}

template <typename Vec>
__global__ void __launch_bounds__(kThreads)
interleave_pack_kernel(const Vec* __restrict__ text,    // total_text x vecs
                       const Vec* __restrict__ visual,  // total_visual x vecs
                       const int64_t* __restrict__ text_labels,  // total_text, or null
                       const int64_t* __restrict__ table,        // segments x 4
                       InterleaveSizes sizes, int64_t vecs, int lanes,
                       Vec* __restrict__ embeds,               // total x vecs
                       int64_t* __restrict__ position_ids,     // total
                       int64_t* __restrict__ labels,           // total
                       int64_t* __restrict__ visual_index) {   // total_visual
  const int lane = threadIdx.x % lanes;
  const int64_t rows_per_block = kThreads / lanes;
  for (int64_t row = blockIdx.x * rows_per_block + threadIdx.x / lanes; row < sizes.total;
       row += int64_t(gridDim.x) * rows_per_block) {
    const RowSource source = locate_row(table, sizes, row, lane == 0);
    const Vec* from = (source.is_text ? text : visual) + source.index * vecs;
    Vec* to = embeds + row * vecs;
    for (int64_t v = lane; v < vecs; v += lanes) to[v] = from[v];
    if (lane == 0) {
      position_ids[row] = row - source.seq_start;
      const bool labelled = source.is_text && text_labels != nullptr;
      labels[row] = labelled ? text_labels[source.index] : kIgnoreIndex;
      if (!source.is_text) visual_index[source.index] = row;
    }
  }
}

template <typename Vec>
__global__ void __launch_bounds__(kThreads)
interleave_pack_backward_kernel(const Vec* __restrict__ grad_embeds,  // total x vecs
                                const int64_t* __restrict__ table,    // segments x 4
                                InterleaveSizes sizes, int64_t vecs, int lanes,
                                Vec* __restrict__ grad_text,      // total_text x vecs
                                Vec* __restrict__ grad_visual) {  // total_visual x vecs
  const int lane = threadIdx.x % lanes;
  const int64_t rows_per_block = kThreads / lanes;
  for (int64_t row = blockIdx.x * rows_per_block + threadIdx.x / lanes; row < sizes.total;
       row += int64_t(gridDim.x) * rows_per_block) {
    const RowSource source = locate_row(table, sizes, row, lane == 0);
    Vec* to = (source.is_text ? grad_text : grad_visual) + source.index * vecs;
    const Vec* from = grad_embeds + row * vecs;
    for (int64_t v = lane; v < vecs; v += lanes) to[v] = from[v];
  }
}

// Launch shape for rows of `vecs` vectors: lanes per row (a power of two <= kThreads) and blocks.
struct RowLaunch {
  int lanes;
  unsigned blocks;
};

RowLaunch row_launch(int64_t rows, int64_t vecs) {
  int lanes = 1;
  while (lanes < kThreads && lanes < vecs) lanes *= 2;
  const int64_t rows_per_block = kThreads / lanes;
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return {lanes, unsigned(blocks < (1 << 16) ? blocks : (1 << 16))};
}

}  // namespace

cudaError_t launch_interleave_pack(const void* text, const void* visual,
                                   const int64_t* text_labels, const int64_t* table,
                                   InterleaveSizes sizes, int64_t row_bytes,
                                   InterleaveOutputs out, cudaStream_t stream) {
  if (sizes.total == 0) return cudaSuccess;
  with_row_vector(row_bytes, {text, visual, out.embeds}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    const RowLaunch launch = row_launch(sizes.total, vecs);
    interleave_pack_kernel<Vec><<<launch.blocks, kThreads, 0, stream>>>(
        static_cast<const Vec*>(text), static_cast<const Vec*>(visual), text_labels, table,
        sizes, vecs, launch.lanes, static_cast<Vec*>(out.embeds), out.position_ids, out.labels,
        out.visual_index);
  });
  return cudaGetLastError();
}

cudaError_t launch_interleave_pack_backward(const void* grad_embeds, const int64_t* table,
                                            InterleaveSizes sizes, int64_t row_bytes,
                                            void* grad_text, void* grad_visual,
                                            cudaStream_t stream) {
  if (sizes.total == 0 || row_bytes == 0) return cudaSuccess;
  with_row_vector(row_bytes, {grad_embeds, grad_text, grad_visual}, [&](auto vec) {
    using Vec = decltype(vec);
    const int64_t vecs = row_bytes / int64_t(sizeof(Vec));
    const RowLaunch launch = row_launch(sizes.total, vecs);
    interleave_pack_backward_kernel<Vec><<<launch.blocks, kThreads, 0, stream>>>(
        static_cast<const Vec*>(grad_embeds), table, sizes, vecs, launch.lanes,
        static_cast<Vec*>(grad_text), static_cast<Vec*>(grad_visual));
  });
  return cudaGetLastError();
}

}  // namespace vidcore
