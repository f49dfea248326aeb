// Per-unit mask keys on the GPU: one thread per (video, unit), grid-strided in both dimensions.
#include <algorithm>

#include "vidcore/unit_keys.h"
#include "vidcore/mask_hash.h"

namespace vidcore {
namespace {

constexpr int kThreads = 256;

__global__ void unit_keys_kernel(const int64_t* __restrict__ video_index,  // num_videos
                                 int64_t num_videos, int64_t num_units, uint32_t seed,
                                 int64_t* __restrict__ keys) {  // num_videos x num_units
  for (int64_t b = blockIdx.y; b < num_videos; b += gridDim.y) {
    const uint32_t base = video_key_base(seed, static_cast<uint32_t>(video_index[b]));
    int64_t* row = keys + b * num_units;
    for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < num_units;
         u += int64_t(gridDim.x) * blockDim.x) {
      row[u] = unit_key(base, static_cast<uint32_t>(u));
    }
  }
}

}  // namespace

cudaError_t launch_unit_keys(const int64_t* video_index, int64_t num_videos, int64_t num_units,
                             uint32_t seed, int64_t* keys, cudaStream_t stream) {
  if (num_videos == 0 || num_units == 0) return cudaSuccess;
  const int64_t blocks_x = std::min<int64_t>((num_units + kThreads - 1) / kThreads, 1 << 16);
  const int64_t blocks_y = std::min<int64_t>(num_videos, 65535);
  unit_keys_kernel<<<dim3(unsigned(blocks_x), unsigned(blocks_y)), kThreads, 0, stream>>>(
      video_index, num_videos, num_units, seed, keys);
  return cudaGetLastError();
}

}  // namespace vidcore
