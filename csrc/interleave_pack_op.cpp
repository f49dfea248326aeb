// Tensor bindings of vidcore::interleave_pack and vidcore::interleave_pack_backward
// (schemas: vidcore/ops/interleave_pack.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <tuple>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/interleave_pack.h"

namespace vidcore {
namespace {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The Python wrapper builds the table and validates arguments with user-facing messages; these
// checks guard the raw-pointer kernels against direct torch.ops calls. The table's contents are
// checked here on the CPU and by device-side asserts in the CUDA kernel (no host sync).
InterleaveSizes check_table(const char* op, const at::Tensor& table, const at::Tensor& like,
                            int64_t total, int64_t total_text, int64_t total_visual,
                            bool check_contents) {
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == kInterleaveColumns &&
                        table.scalar_type() == at::kLong && table.is_contiguous() &&
                        table.device() == like.device(),
                    op, ": segment_table must be a contiguous int64 [S, 4] tensor on the "
                    "device of the rows");
  TORCH_CHECK_VALUE(total_text >= 0 && total_text <= total && total_visual == total - total_text,
                    op, ": total must equal text rows + visual rows, got ", total, " != ",
                    total_text, " + ", total_visual);
  const InterleaveSizes sizes{table.size(0), total, total_text, total_visual};
  if (check_contents) {
    const char* error = interleave_table_error(table.const_data_ptr<int64_t>(), sizes);
    TORCH_CHECK_VALUE(error == nullptr, op, ": invalid segment_table: ", error);
  }
  return sizes;
}

void check_rows(const char* op, const char* name, const at::Tensor& rows, const at::Tensor& like) {
  TORCH_CHECK_VALUE(rows.dim() == 2 && rows.is_contiguous() && rows.device() == like.device() &&
                        rows.scalar_type() == like.scalar_type() && rows.size(1) == like.size(1),
                    op, ": ", name, " must be a contiguous [rows, D] tensor like text");
}

int64_t row_bytes(const at::Tensor& rows) { return rows.size(1) * rows.element_size(); }

template <bool kCuda>
Outputs interleave_pack_impl(const at::Tensor& text, const at::Tensor& visual,
                             const at::Tensor& table, const c10::optional<at::Tensor>& labels,
                             int64_t total) {
  constexpr const char* op = "interleave_pack";
  check_rows(op, "text", text, text);
  check_rows(op, "visual", visual, text);
  if (labels.has_value()) {
    TORCH_CHECK_VALUE(labels->dim() == 1 && labels->size(0) == text.size(0) &&
                          labels->scalar_type() == at::kLong && labels->is_contiguous() &&
                          labels->device() == text.device(),
                      op, ": text_labels must be a contiguous int64 [total_text] tensor");
  }
  const InterleaveSizes sizes =
      check_table(op, table, text, total, text.size(0), visual.size(0), !kCuda);
  at::Tensor embeds = at::empty({total, text.size(1)}, text.options());
  at::Tensor position_ids = at::empty({total}, table.options());
  at::Tensor out_labels = at::empty({total}, table.options());
  at::Tensor visual_index = at::empty({visual.size(0)}, table.options());
  const InterleaveOutputs out{embeds.mutable_data_ptr(), position_ids.mutable_data_ptr<int64_t>(),
                              out_labels.mutable_data_ptr<int64_t>(),
                              visual_index.mutable_data_ptr<int64_t>()};
  const int64_t* label_ptr = labels.has_value() ? labels->const_data_ptr<int64_t>() : nullptr;
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(text.device());
    C10_CUDA_CHECK(launch_interleave_pack(text.const_data_ptr(), visual.const_data_ptr(),
                                          label_ptr, table.const_data_ptr<int64_t>(), sizes,
                                          row_bytes(text), out,
                                          c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    interleave_pack_cpu(text.const_data_ptr(), visual.const_data_ptr(), label_ptr,
                        table.const_data_ptr<int64_t>(), sizes, row_bytes(text), out);
  }
  return {embeds, position_ids, out_labels, visual_index};
}

template <bool kCuda>
std::tuple<at::Tensor, at::Tensor> interleave_pack_backward_impl(const at::Tensor& grad,
                                                                 const at::Tensor& table,
                                                                 int64_t total_text,
                                                                 int64_t total_visual) {
  constexpr const char* op = "interleave_pack_backward";
  check_rows(op, "grad_embeds", grad, grad);
  const InterleaveSizes sizes =
      check_table(op, table, grad, grad.size(0), total_text, total_visual, !kCuda);
  at::Tensor grad_text = at::empty({total_text, grad.size(1)}, grad.options());
  at::Tensor grad_visual = at::empty({total_visual, grad.size(1)}, grad.options());
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(grad.device());
    C10_CUDA_CHECK(launch_interleave_pack_backward(
        grad.const_data_ptr(), table.const_data_ptr<int64_t>(), sizes, row_bytes(grad),
        grad_text.mutable_data_ptr(), grad_visual.mutable_data_ptr(),
        c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    interleave_pack_backward_cpu(grad.const_data_ptr(), table.const_data_ptr<int64_t>(), sizes,
                                 row_bytes(grad), grad_text.mutable_data_ptr(),
                                 grad_visual.mutable_data_ptr());
  }
  return {grad_text, grad_visual};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) {
  m.impl("interleave_pack", &interleave_pack_impl<false>);
  m.impl("interleave_pack_backward", &interleave_pack_backward_impl<false>);
}

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) {
  m.impl("interleave_pack", &interleave_pack_impl<true>);
  m.impl("interleave_pack_backward", &interleave_pack_backward_impl<true>);
}
#endif

}  // namespace vidcore
