// Tensor bindings of vidcore::pool (schema: vidcore/ops/pool.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/pool.h"

namespace vidcore {
namespace {

int pool_scalar_type(const at::Tensor& x, bool cuda) {
  switch (x.scalar_type()) {
    case at::kFloat: return kPoolFloat;
    case at::kHalf: return kPoolHalf;
    case at::kBFloat16: return kPoolBFloat16;
    case at::kDouble: if (!cuda) return kPoolDouble; [[fallthrough]];
    default: TORCH_CHECK(false, "pool: unsupported dtype ", x.scalar_type());
  }
}

// The Python wrapper validates arguments and builds the plan; these checks only guard the
// raw-pointer kernels against direct torch.ops calls.
at::Tensor alloc_pooled(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& table) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "pool: x must be contiguous [frames, H, W, D]");
  TORCH_CHECK(plan.dim() == 2 && plan.size(1) == kPoolPlanColumns &&
                  plan.scalar_type() == at::kLong && plan.is_contiguous() &&
                  plan.device() == x.device(),
              "pool: plan must be a contiguous int64 [L, 7] tensor on x's device");
  TORCH_CHECK(table.dim() == 1 && table.scalar_type() == at::kLong && table.is_contiguous() &&
                  table.device() == x.device(),
              "pool: frame_table must be a contiguous int64 vector on x's device");
  return at::empty({plan.size(0), x.size(3)}, x.options());
}

at::Tensor pool_cpu_impl(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& table) {
  at::Tensor out = alloc_pooled(x, plan, table);
  pool_cpu(x.const_data_ptr(), pool_scalar_type(x, false), plan.const_data_ptr<int64_t>(),
           plan.size(0), table.const_data_ptr<int64_t>(), x.size(1), x.size(2), x.size(3),
           out.mutable_data_ptr());
  return out;
}

// Gradients accumulate in fp32 (fp64 for fp64 x) and are cast to x's dtype at the end.
at::Tensor zeroed_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& plan,
                       const at::Tensor& table) {
  alloc_pooled(x, plan, table);  // same checks as the forward
  TORCH_CHECK(grad.is_contiguous() && grad.dim() == 2 && grad.size(0) == plan.size(0) &&
                  grad.size(1) == x.size(3) && grad.scalar_type() == x.scalar_type(),
              "pool_backward: grad must be a contiguous [L, D] tensor like the output");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros(x.sizes(), x.options().dtype(acc));
}

at::Tensor pool_backward_cpu_impl(const at::Tensor& grad, const at::Tensor& x,
                                  const at::Tensor& plan, const at::Tensor& table) {
  at::Tensor grad_x = zeroed_grad(grad, x, plan, table);
  pool_backward_cpu(grad.const_data_ptr(), x.const_data_ptr(), pool_scalar_type(x, false),
                    plan.const_data_ptr<int64_t>(), plan.size(0),
                    table.const_data_ptr<int64_t>(), x.size(1), x.size(2), x.size(3),
                    grad_x.mutable_data_ptr());
  return grad_x.to(x.scalar_type());
}

#ifdef VIDCORE_WITH_CUDA
at::Tensor pool_backward_cuda_impl(const at::Tensor& grad, const at::Tensor& x,
                                   const at::Tensor& plan, const at::Tensor& table) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = zeroed_grad(grad, x, plan, table);
  C10_CUDA_CHECK(launch_pool_backward(
      grad.const_data_ptr(), x.const_data_ptr(), pool_scalar_type(x, true),
      plan.const_data_ptr<int64_t>(), plan.size(0), table.const_data_ptr<int64_t>(), x.size(1),
      x.size(2), x.size(3), grad_x.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return grad_x.to(x.scalar_type());
}

at::Tensor pool_cuda_impl(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& table) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = alloc_pooled(x, plan, table);
  C10_CUDA_CHECK(launch_pool(x.const_data_ptr(), pool_scalar_type(x, true),
                             plan.const_data_ptr<int64_t>(), plan.size(0),
                             table.const_data_ptr<int64_t>(), x.size(1), x.size(2), x.size(3),
                             out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) {
  m.impl("pool", &pool_cpu_impl);
  m.impl("pool_backward", &pool_backward_cpu_impl);
}

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) {
  m.impl("pool", &pool_cuda_impl);
  m.impl("pool_backward", &pool_backward_cuda_impl);
}
#endif

}  // namespace vidcore
