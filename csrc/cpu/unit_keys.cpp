// CPU twin of csrc/cuda/unit_keys.cu: the same mask_hash.h, parallel over videos and units.
#include <ATen/Parallel.h>

#include <algorithm>

#include "vidcore/mask_hash.h"
#include "vidcore/unit_keys.h"

namespace vidcore {
namespace {

// The extension is built for baseline x86-64 (SSE2, no 32-bit vector multiply); cloning the
// hot loop for AVX2 lets the hash vectorise 8-wide on machines that have it.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void fill_row(uint32_t video_base, int64_t unit_begin, int64_t unit_end, int64_t* keys) {
  for (int64_t u = unit_begin; u < unit_end; ++u) {
    keys[u] = unit_key(video_base, static_cast<uint32_t>(u));
  }
}

}  // namespace

void unit_keys_cpu(const int64_t* video_index, int64_t num_videos, int64_t num_units,
                   uint32_t seed, int64_t* keys) {
  constexpr int64_t kGrain = 1 << 14;  // below this, threading costs more than hashing
  at::parallel_for(0, num_videos * num_units, kGrain, [&](int64_t begin, int64_t end) {
    // [begin, end) may span several videos: fill it one video's row segment at a time.
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / num_units;
      const int64_t row_start = b * num_units;
      const int64_t segment_end = std::min(end, row_start + num_units);
      fill_row(video_key_base(seed, static_cast<uint32_t>(video_index[b])), i - row_start,
               segment_end - row_start, keys + row_start);
      i = segment_end;
    }
  });
}

}  // namespace vidcore
