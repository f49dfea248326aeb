// Tensor bindings of vidcore::pool and vidcore::pool_backward (schemas: vidcore/ops/pool.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

int pool_scalar_type(const char* op, const at::Tensor& x, bool cuda) {
  switch (x.scalar_type()) {
    case at::kFloat: return kPoolFloat;
    case at::kHalf: return kPoolHalf;
    case at::kBFloat16: return kPoolBFloat16;
    case at::kDouble: if (!cuda) return kPoolDouble; [[fallthrough]];
    default: TORCH_CHECK(false, op, ": unsupported dtype ", x.scalar_type());
  }
}

// Layouts, dtypes and devices: enough for the kernels to address every tensor. Index ranges
// are the plan contract's (vidcore/pool.h): checked by check_plan on the CPU, asserted on the
// device by the CUDA kernels.
void check_layout(const char* op, const at::Tensor& x, const at::Tensor& plan,
                  const at::Tensor& table) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), op,
              ": x must be a contiguous [frames, H, W, D] tensor, got shape ", x.sizes());
  TORCH_CHECK(plan.dim() == 2 && plan.size(1) == kPoolPlanColumns &&
                  plan.scalar_type() == at::kLong && plan.is_contiguous() &&
                  plan.device() == x.device(),
              op, ": plan must be a contiguous int64 [L, 7] tensor on ", x.device(), ", got ",
              plan.scalar_type(), " ", plan.sizes(), " on ", plan.device());
  TORCH_CHECK(table.dim() == 1 && table.scalar_type() == at::kLong && table.is_contiguous() &&
                  table.device() == x.device(),
              op, ": frame_table must be a contiguous int64 vector on ", x.device(), ", got ",
              table.scalar_type(), " ", table.sizes(), " on ", table.device());
}

const char* plan_problem_text(int problem) {
  switch (problem) {
    case kPlanFrameSlice: return "its frame slice [fb, fe) must satisfy 0 <= fb < fe <= "
                                 "len(frame_table)";
    case kPlanRows: return "its rows [r0, r1) must satisfy 0 <= r0 < r1 <= H";
    case kPlanCols: return "its columns [c0, c1) must satisfy 0 <= c0 < c1 <= W";
    case kPlanMode: return "its mode must be 0 (avg) or 1 (max)";
    case kPlanBoxTooLarge: return "its box must hold fewer than 2^31 cells";
    case kPlanSliceOrder: return "rows must come in frame-slice order: a slice equal to the "
                                 "previous row's or starting at or after its end";
    default: return "windows sharing a frame slice must not go back: r0 and r1 non-decreasing";
  }
}

// The plan contract on host data: O(L + table), a small fraction of the copy it guards.
void check_plan(const char* op, const at::Tensor& x, const at::Tensor& plan,
                const at::Tensor& table) {
  const int64_t* rows = plan.const_data_ptr<int64_t>();
  const int64_t table_size = table.size(0);
  for (int64_t j = 0; j < plan.size(0); ++j) {
    const int64_t* row = rows + j * kPoolPlanColumns;
    const int problem = pool_plan_row_problem(row, j > 0 ? row - kPoolPlanColumns : nullptr,
                                              table_size, x.size(1), x.size(2));
    TORCH_CHECK(problem == kPlanOk, op, ": plan[", j, "] = [", row[0], ", ", row[1], ", ",
                row[2], ", ", row[3], ", ", row[4], ", ", row[5], ", ", row[6], "]: ",
                plan_problem_text(problem), " (frame_table has ", table_size,
                " entries, x is ", x.sizes(), ")");
  }
  const int64_t* frames = table.const_data_ptr<int64_t>();
  for (int64_t s = 0; s < table_size; ++s) {
    TORCH_CHECK(0 <= frames[s] && frames[s] < x.size(0), op, ": frame_table[", s, "] = ",
                frames[s], " is outside x's ", x.size(0), " frames");
  }
}

void check_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& plan) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == plan.size(0) && grad.size(1) == x.size(3) &&
                  grad.is_contiguous() && grad.scalar_type() == x.scalar_type() &&
                  grad.device() == x.device(),
              "pool_backward: grad must be a contiguous ", x.scalar_type(), " [", plan.size(0),
              ", ", x.size(3), "] tensor on ", x.device(), " like pool's output, got ",
              grad.scalar_type(), " ", grad.sizes(), " on ", grad.device());
}

at::Tensor pool_cpu_impl(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& table) {
  check_layout("pool", x, plan, table);
  const int scalar_type = pool_scalar_type("pool", x, false);
  check_plan("pool", x, plan, table);
  at::Tensor out = at::empty({plan.size(0), x.size(3)}, x.options());
  pool_cpu(x.const_data_ptr(), scalar_type, plan.const_data_ptr<int64_t>(), plan.size(0),
           table.const_data_ptr<int64_t>(), x.size(1), x.size(2), x.size(3),
           out.mutable_data_ptr());
  return out;
}

at::Tensor pool_backward_cpu_impl(const at::Tensor& grad, const at::Tensor& x,
                                  const at::Tensor& plan, const at::Tensor& table) {
  check_layout("pool_backward", x, plan, table);
  check_grad(grad, x, plan);
  const int scalar_type = pool_scalar_type("pool_backward", x, false);
  check_plan("pool_backward", x, plan, table);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  pool_backward_cpu(grad.const_data_ptr(), x.const_data_ptr(), scalar_type,
                    plan.const_data_ptr<int64_t>(), plan.size(0),
                    table.const_data_ptr<int64_t>(), table.size(0), x.size(0), x.size(1),
                    x.size(2), x.size(3), grad_x.mutable_data_ptr());
  return grad_x;
}

#ifdef VIDCORE_WITH_CUDA
at::Tensor pool_cuda_impl(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& table) {
  check_layout("pool", x, plan, table);
  const int scalar_type = pool_scalar_type("pool", x, true);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({plan.size(0), x.size(3)}, x.options());
  C10_CUDA_CHECK(launch_pool(x.const_data_ptr(), scalar_type, plan.const_data_ptr<int64_t>(),
                             plan.size(0), table.const_data_ptr<int64_t>(), table.size(0),
                             x.size(0), x.size(1), x.size(2), x.size(3), out.mutable_data_ptr(),
                             c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor pool_backward_cuda_impl(const at::Tensor& grad, const at::Tensor& x,
                                   const at::Tensor& plan, const at::Tensor& table) {
  check_layout("pool_backward", x, plan, table);
  check_grad(grad, x, plan);
  const int scalar_type = pool_scalar_type("pool_backward", x, true);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor picked = at::empty({plan.size(0), x.size(3)}, x.options().dtype(at::kInt));
  C10_CUDA_CHECK(launch_pool_backward(
      grad.const_data_ptr(), x.const_data_ptr(), scalar_type, plan.const_data_ptr<int64_t>(),
      plan.size(0), table.const_data_ptr<int64_t>(), table.size(0), x.size(0), x.size(1),
      x.size(2), x.size(3), picked.mutable_data_ptr<int32_t>(), grad_x.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream()));
  return grad_x;
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
