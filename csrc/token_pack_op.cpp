// Tensor bindings of vidcore::pack, vidcore::unpack and vidcore::unpack_fill_grad (schemas:
// vidcore/ops/token_pack.py).
//
// Direct torch.ops calls reach these without the Python checks, so shapes, dtypes and devices are
// checked here, and keep_idx's values where they are read: the CPU twins raise a RuntimeError
// naming the first bad position (pack: in range; unpack and unpack_fill_grad: strictly ascending
// in range, the order the row search relies on); the CUDA kernels assert the same on the device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/token_pack.h"

namespace vidcore {
namespace {

void check_rows(const char* op, const char* name, const at::Tensor& rows,
                const at::Tensor& keep_idx) {
  TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous(), op, ": ", name,
              " must be contiguous [rows, D], got shape ", rows.sizes());
  TORCH_CHECK(keep_idx.dim() == 1 && keep_idx.scalar_type() == at::kLong &&
                  keep_idx.is_contiguous() && keep_idx.device() == rows.device(),
              op, ": keep_idx must be a contiguous 1-D int64 tensor on ", name, "'s device, got ",
              keep_idx.scalar_type(), " ", keep_idx.sizes(), " on ", keep_idx.device());
}

int64_t row_bytes(const at::Tensor& rows) { return rows.size(1) * rows.element_size(); }

// unpack's index contract, checked on the host for CPU tensors.
void check_ordered(const char* op, const at::Tensor& keep_idx, int64_t num_rows) {
  TORCH_CHECK(num_rows >= 0, op, ": num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK(keep_idx.size(0) <= num_rows, op, ": keep_idx has ", keep_idx.size(0),
              " entries, more than the ", num_rows, " rows it indexes");
  if (keep_idx.is_cuda()) return;
  const int64_t* index = keep_idx.const_data_ptr<int64_t>();
  const int64_t bad = first_unordered_index(index, keep_idx.size(0), num_rows);
  TORCH_CHECK(bad < 0, op, ": keep_idx must be strictly ascending within [0, ", num_rows,
              "), but keep_idx[", bad, "] = ", index[bad < 0 ? 0 : bad],
              bad + 1 < keep_idx.size(0) ? " is not below the next entry" : "");
}

template <bool kCuda>
at::Tensor pack_impl(const at::Tensor& x, const at::Tensor& keep_idx) {
  check_rows("pack", "x", x, keep_idx);
  at::Tensor out = at::empty({keep_idx.size(0), x.size(1)}, x.options());
  const int64_t* index = keep_idx.const_data_ptr<int64_t>();
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    C10_CUDA_CHECK(launch_pack(x.const_data_ptr(), x.size(0), index, keep_idx.size(0),
                               row_bytes(x), out.mutable_data_ptr(),
                               c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    const int64_t bad = pack_cpu(x.const_data_ptr(), x.size(0), index, keep_idx.size(0),
                                 row_bytes(x), out.mutable_data_ptr());
    TORCH_CHECK(bad < 0, "pack: keep_idx[", bad, "] = ", index[bad < 0 ? 0 : bad],
                " is out of range for x with ", x.size(0), " rows");
  }
  return out;
}

template <bool kCuda>
at::Tensor unpack_impl(const at::Tensor& packed, const at::Tensor& keep_idx,
                       const at::Tensor& fill, int64_t num_rows) {
  check_rows("unpack", "packed", packed, keep_idx);
  TORCH_CHECK(keep_idx.size(0) == packed.size(0), "unpack: keep_idx must have one entry per "
              "packed row (", packed.size(0), "), got ", keep_idx.size(0));
  TORCH_CHECK(fill.dim() == 1 && fill.is_contiguous() && fill.size(0) == packed.size(1) &&
                  fill.scalar_type() == packed.scalar_type() && fill.device() == packed.device(),
              "unpack: fill must be a contiguous [D] tensor with packed's dtype and device, got ",
              fill.scalar_type(), " ", fill.sizes());
  check_ordered("unpack", keep_idx, num_rows);
  at::Tensor out = at::empty({num_rows, packed.size(1)}, packed.options());
  const int64_t* index = keep_idx.const_data_ptr<int64_t>();
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(packed.device());
    C10_CUDA_CHECK(launch_unpack(packed.const_data_ptr(), index, keep_idx.size(0),
                                 fill.const_data_ptr(), num_rows, row_bytes(packed),
                                 out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    unpack_cpu(packed.const_data_ptr(), index, keep_idx.size(0), fill.const_data_ptr(), num_rows,
               row_bytes(packed), out.mutable_data_ptr());
  }
  return out;
}

int fill_grad_scalar_type(const at::Tensor& grad) {
  switch (grad.scalar_type()) {
    case at::kFloat: return kFillFloat;
    case at::kHalf: return kFillHalf;
    case at::kBFloat16: return kFillBFloat16;
    case at::kDouble: return kFillDouble;
    default:
      TORCH_CHECK(false, "unpack_fill_grad: grad_out must be float32, float64, float16 or "
                  "bfloat16, got ", grad.scalar_type());
  }
}

template <bool kCuda>
at::Tensor unpack_fill_grad_impl(const at::Tensor& grad_out, const at::Tensor& keep_idx) {
  check_rows("unpack_fill_grad", "grad_out", grad_out, keep_idx);
  const int scalar_type = fill_grad_scalar_type(grad_out);
  const int64_t num_rows = grad_out.size(0), channels = grad_out.size(1);
  check_ordered("unpack_fill_grad", keep_idx, num_rows);
  const auto acc = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor fill_grad = at::empty({channels}, grad_out.options().dtype(acc));
  const int64_t* index = keep_idx.const_data_ptr<int64_t>();
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(grad_out.device());
    const int64_t tiles = (num_rows + kFillGradTile - 1) / kFillGradTile;
    at::Tensor partials = at::empty({tiles, channels}, fill_grad.options());
    C10_CUDA_CHECK(launch_unpack_fill_grad(grad_out.const_data_ptr(), scalar_type, index,
                                           keep_idx.size(0), num_rows, channels,
                                           partials.mutable_data_ptr(),
                                           fill_grad.mutable_data_ptr(),
                                           c10::cuda::getCurrentCUDAStream()));
#endif
  } else {
    unpack_fill_grad_cpu(grad_out.const_data_ptr(), scalar_type, index, keep_idx.size(0),
                         num_rows, channels, fill_grad.mutable_data_ptr());
  }
  return fill_grad.to(grad_out.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) {
  m.impl("pack", &pack_impl<false>);
  m.impl("unpack", &unpack_impl<false>);
  m.impl("unpack_fill_grad", &unpack_fill_grad_impl<false>);
}

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) {
  m.impl("pack", &pack_impl<true>);
  m.impl("unpack", &unpack_impl<true>);
  m.impl("unpack_fill_grad", &unpack_fill_grad_impl<true>);
}
#endif

}  // namespace vidcore
