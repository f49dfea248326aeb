// Tensor bindings of vidcore::make_mask, vidcore::pack and vidcore::unpack
// (schemas: vidcore/ops/token_mask.py and vidcore/ops/token_pack.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/token_mask.h"

namespace vidcore {
namespace {

// The Python wrappers validate arguments with user-facing messages; these checks only guard the
// raw-pointer kernels against direct torch.ops calls.
MaskGeometry geometry_of(const at::Tensor& video_meta, int64_t height, int64_t width,
                         c10::string_view pattern, c10::IntArrayRef block) {
  TORCH_CHECK(video_meta.dim() == 2 && video_meta.size(1) == kVideoMetaColumns &&
                  video_meta.scalar_type() == at::kLong && video_meta.is_contiguous(),
              "make_mask: video_meta must be a contiguous int64 [B, 4] tensor");
  TORCH_CHECK(block.size() == 3 && block[0] > 0 && block[1] > 0 && block[2] > 0,
              "make_mask: block must be 3 positive sizes");
  TORCH_CHECK(height >= 0 && width >= 0, "make_mask: frame size must be >= 0");
  int32_t code = pattern == "random" ? kRandom : pattern == "tube" ? kTube
               : pattern == "frame"  ? kFrame  : pattern == "block" ? kBlock : -1;
  TORCH_CHECK(code >= 0, "make_mask: unknown pattern ", pattern);
  return MaskGeometry{code, height, width, block[0], block[1], block[2]};
}

void check_rows(const char* op, const at::Tensor& rows, const at::Tensor& index) {
  TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous(), op, ": rows must be contiguous 2-D");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong && index.is_contiguous() &&
                  index.device() == rows.device(),
              op, ": keep_idx must be a contiguous 1-D int64 tensor on the rows' device");
}

int64_t row_bytes(const at::Tensor& rows) { return rows.size(1) * rows.element_size(); }

template <bool kCuda>
at::Tensor make_mask_impl(const at::Tensor& video_meta, int64_t height, int64_t width,
                          c10::string_view pattern, c10::IntArrayRef block, int64_t seed,
                          int64_t total_kept) {
  const MaskGeometry g = geometry_of(video_meta, height, width, pattern, block);
  at::Tensor keep_idx = at::empty({total_kept}, video_meta.options());
  const auto s = static_cast<uint32_t>(seed);
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(video_meta.device());
    C10_CUDA_CHECK(launch_make_mask(video_meta.const_data_ptr<int64_t>(), video_meta.size(0), g,
                                    s, keep_idx.mutable_data_ptr<int64_t>(),
                                    c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    make_mask_cpu(video_meta.const_data_ptr<int64_t>(), video_meta.size(0), g, s,
                  keep_idx.mutable_data_ptr<int64_t>());
  }
  return keep_idx;
}

template <bool kCuda>
at::Tensor pack_impl(const at::Tensor& x, const at::Tensor& keep_idx) {
  check_rows("pack", x, keep_idx);
  at::Tensor out = at::empty({keep_idx.size(0), x.size(1)}, x.options());
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    C10_CUDA_CHECK(launch_gather_rows(x.const_data_ptr(), keep_idx.const_data_ptr<int64_t>(),
                                      keep_idx.size(0), row_bytes(x), out.mutable_data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    gather_rows_cpu(x.const_data_ptr(), keep_idx.const_data_ptr<int64_t>(), keep_idx.size(0),
                    row_bytes(x), out.mutable_data_ptr());
  }
  return out;
}

template <bool kCuda>
at::Tensor unpack_impl(const at::Tensor& packed, const at::Tensor& keep_idx,
                       const at::Tensor& fill, int64_t num_rows) {
  check_rows("unpack", packed, keep_idx);
  TORCH_CHECK(fill.dim() == 1 && fill.is_contiguous() && fill.size(0) == packed.size(1) &&
                  fill.scalar_type() == packed.scalar_type() && fill.device() == packed.device(),
              "unpack: fill must be a contiguous [D] tensor like packed");
  at::Tensor out = at::empty({num_rows, packed.size(1)}, packed.options());
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(packed.device());
    C10_CUDA_CHECK(launch_unpack_rows(packed.const_data_ptr(), keep_idx.const_data_ptr<int64_t>(),
                                      keep_idx.size(0), fill.const_data_ptr(), num_rows,
                                      row_bytes(packed), out.mutable_data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    unpack_rows_cpu(packed.const_data_ptr(), keep_idx.const_data_ptr<int64_t>(), keep_idx.size(0),
                    fill.const_data_ptr(), num_rows, row_bytes(packed), out.mutable_data_ptr());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) {
  m.impl("make_mask", &make_mask_impl<false>);
  m.impl("pack", &pack_impl<false>);
  m.impl("unpack", &unpack_impl<false>);
}

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) {
  m.impl("make_mask", &make_mask_impl<true>);
  m.impl("pack", &pack_impl<true>);
  m.impl("unpack", &unpack_impl<true>);
}
#endif

}  // namespace vidcore
