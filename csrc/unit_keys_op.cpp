// Tensor bindings of vidcore::unit_keys (schema: vidcore/ops/unit_keys.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/unit_keys.h"

namespace vidcore {
namespace {

// The Python wrapper validates arguments with user-facing messages. Direct torch.ops calls get
// these checks: the kernels read video_index[0, B) and write keys[0, B * num_units), in range by
// construction once video_index is a contiguous 1-D int64 tensor and the sizes are >= 0; every
// int64 value of video_index is a valid input (its low 32 bits are hashed, like the reference).
at::Tensor alloc_keys(const at::Tensor& video_index, int64_t seed, int64_t num_units) {
  TORCH_CHECK(video_index.dim() == 1 && video_index.scalar_type() == at::kLong &&
                  video_index.is_contiguous(),
              "unit_keys: video_index must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(num_units >= 0, "unit_keys: num_units must be >= 0, got ", num_units);
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL, "unit_keys: seed must be in [0, 2^32)");
  return at::empty({video_index.size(0), num_units}, video_index.options());
}

at::Tensor unit_keys_cpu_impl(const at::Tensor& video_index, int64_t seed, int64_t num_units) {
  at::Tensor keys = alloc_keys(video_index, seed, num_units);
  unit_keys_cpu(video_index.const_data_ptr<int64_t>(), video_index.size(0), num_units,
                static_cast<uint32_t>(seed), keys.mutable_data_ptr<int64_t>());
  return keys;
}

#ifdef VIDCORE_WITH_CUDA
at::Tensor unit_keys_cuda_impl(const at::Tensor& video_index, int64_t seed, int64_t num_units) {
  const c10::cuda::CUDAGuard guard(video_index.device());
  at::Tensor keys = alloc_keys(video_index, seed, num_units);
  C10_CUDA_CHECK(launch_unit_keys(video_index.const_data_ptr<int64_t>(), video_index.size(0),
                                  num_units, static_cast<uint32_t>(seed),
                                  keys.mutable_data_ptr<int64_t>(),
                                  c10::cuda::getCurrentCUDAStream()));
  return keys;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) { m.impl("unit_keys", &unit_keys_cpu_impl); }

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) { m.impl("unit_keys", &unit_keys_cuda_impl); }
#endif

}  // namespace vidcore
