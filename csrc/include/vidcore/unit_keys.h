// Torch-free entry points of the unit_keys kernels: raw pointers, sizes, a stream. One header per
// op (csrc/include/vidcore/<op>.h) is the only contract between csrc/cuda/<op>.cu,
// csrc/cpu/<op>.cpp and the tensor bindings in csrc/<op>_op.cpp.
#pragma once

#include <cstdint>

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace vidcore {

// keys[b * num_units + u] = unit_key(video_key_base(seed, video_index[b]), u)
void unit_keys_cpu(const int64_t* video_index,  // num_videos
                   int64_t num_videos, int64_t num_units, uint32_t seed,
                   int64_t* keys);  // num_videos x num_units

#if defined(VIDCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t launch_unit_keys(const int64_t* video_index,  // num_videos
                             int64_t num_videos, int64_t num_units, uint32_t seed,
                             int64_t* keys,  // num_videos x num_units
                             cudaStream_t stream);
#endif

}  // namespace vidcore
