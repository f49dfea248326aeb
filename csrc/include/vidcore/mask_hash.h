// The mask RNG of DESIGN.md op 1, written once for the CPU twin and the CUDA kernel.
//
// Unit u of video b under seed s gets the key k = h(h(h(s ^ 0x9e3779b9) ^ b) ^ u), where h is
// Chris Wellons' "lowbias32" integer hash. A hash instead of a stateful generator makes every
// key a pure function of (s, b, u): any thread computes any key, in any order, with no state,
// and the reference (vidcore/reference.py) reproduces it bit for bit.
#pragma once

#include <cstdint>

#include "vidcore/macros.h"

namespace vidcore {

VIDCORE_HD uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The part of the key that depends only on (seed, video): computed once per video.
VIDCORE_HD uint32_t video_key_base(uint32_t seed, uint32_t video_index) {
  return lowbias32(lowbias32(seed ^ 0x9e3779b9U) ^ video_index);
}

VIDCORE_HD uint32_t unit_key(uint32_t video_base, uint32_t unit_index) {
  return lowbias32(video_base ^ unit_index);
}

}  // namespace vidcore
