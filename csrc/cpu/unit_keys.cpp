// CPU twin of csrc/cuda/unit_keys.cu: the same mask_hash.h, parallel over videos and units.
#include <ATen/Parallel.h>

#include "vidcore/unit_keys.h"
#include "vidcore/mask_hash.h"

namespace vidcore {

void unit_keys_cpu(const int64_t* video_index, int64_t num_videos, int64_t num_units,
                   uint32_t seed, int64_t* keys) {
  const int64_t total = num_videos * num_units;
  constexpr int64_t kGrain = 1 << 14;  // below this, threading costs more than hashing
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / num_units;
    int64_t u = begin % num_units;
    uint32_t base = video_key_base(seed, static_cast<uint32_t>(video_index[b]));
    for (int64_t i = begin; i < end; ++i) {
      keys[i] = unit_key(base, static_cast<uint32_t>(u));
      if (++u == num_units && i + 1 < end) {
        u = 0;
        base = video_key_base(seed, static_cast<uint32_t>(video_index[++b]));
      }
    }
  });
}

}  // namespace vidcore
