// Tensor bindings of vidcore::make_mask and vidcore::mask_and_pack (schemas:
// vidcore/ops/token_mask.py and vidcore/ops/token_pack.py).
//
// Direct torch.ops calls reach these without the Python checks, so everything a kernel
// dereferences is checked here or on the device: the geometry and sizes on the host; every
// video_meta row by video_meta_error (vidcore/token_mask.h), on the host for CPU tensors (a
// RuntimeError naming the row and column) and by a device-side assert in the CUDA kernels (no
// host sync), which is what makes keep_idx and x accesses in range.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#ifdef VIDCORE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "vidcore/token_mask.h"

namespace vidcore {
namespace {

MaskGeometry geometry_of(const char* op, int64_t height, int64_t width, c10::string_view pattern,
                         c10::IntArrayRef block) {
  TORCH_CHECK(height >= 0 && width >= 0 && (height == 0 || width <= kMaxFrameTokens / height),
              op, ": height and width must be >= 0 with height * width < 2^31, got ", height,
              " x ", width);
  TORCH_CHECK(block.size() == 3 && block[0] > 0 && block[1] > 0 && block[2] > 0, op,
              ": block must be 3 positive sizes (kt, kh, kw), got ", block);
  const int32_t code = pattern == "random" ? kRandom : pattern == "tube" ? kTube
                     : pattern == "frame"  ? kFrame  : pattern == "block" ? kBlock : -1;
  TORCH_CHECK(code >= 0, op, ": pattern must be random, tube, frame or block, got ", pattern);
  TORCH_CHECK(code != kBlock || (height % block[1] == 0 && width % block[2] == 0), op,
              ": block ", block, " must divide the frame size ", height, " x ", width);
  return MaskGeometry{code, height, width, block[0], block[1], block[2]};
}

const char* meta_error_text(int error) {
  switch (error) {
    case kMetaFrames:
      return "T_b (column 1) must be in [0, max_frames], give fewer than 2^32 units and be a "
             "multiple of kt for the block pattern";
    case kMetaMasked:
      return "the masked unit count (column 2) must be in [0, U_b]";
    case kMetaTokenOffset:
      return "the token offset (column 0) must be 0 for the first video and leave room for the "
             "video's T_b * H * W token rows";
    case kMetaOutOffset:
      return "the out offset (column 3) must be 0 for the first video, leave room for its kept "
             "tokens within total_kept, and the last video must end at total_kept";
    case kMetaNextTokenOffset:
      return "its token offset (column 0) must be the previous video's plus its T_b * H * W";
    default:
      return "its out offset (column 3) must be the previous video's plus its kept tokens";
  }
}

// Shapes and host sizes; for CPU tensors also every row (CUDA kernels assert them instead).
void check_video_meta(const char* op, const at::Tensor& video_meta, const MaskGeometry& g,
                      const MetaLimits& limits, int64_t seed) {
  TORCH_CHECK(video_meta.dim() == 2 && video_meta.size(1) == kVideoMetaColumns &&
                  video_meta.scalar_type() == at::kLong && video_meta.is_contiguous(),
              op, ": video_meta must be a contiguous int64 [B, 4] tensor, got ",
              video_meta.scalar_type(), " ", video_meta.sizes());
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL, op, ": seed must be in [0, 2^32), got ", seed);
  TORCH_CHECK(limits.total_kept >= 0, op, ": total_kept must be >= 0, got ", limits.total_kept);
  TORCH_CHECK(limits.max_frames >= 0 && limits.max_frames <= kMaxFrames, op,
              ": max_frames must be in [0, 2^31), got ", limits.max_frames);
  const int64_t videos = video_meta.size(0);
  TORCH_CHECK(videos > 0 || limits.total_kept == 0, op,
              ": total_kept must be 0 for an empty batch, got ", limits.total_kept);
  if (video_meta.is_cuda()) return;
  const int64_t* meta = video_meta.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < videos; ++b) {
    const int error = video_meta_error(meta, b, videos, g, limits);
    // A broken link between rows b and b + 1 is reported at row b + 1.
    const int64_t at = error == kMetaNextTokenOffset || error == kMetaNextOutOffset ? b + 1 : b;
    TORCH_CHECK(error == kMetaOk, op, ": video_meta row ", at, " ",
                c10::IntArrayRef(meta + at * kVideoMetaColumns, kVideoMetaColumns),
                " is inconsistent: ", meta_error_text(error), " (H x W = ", g.height, " x ",
                g.width, ", total_kept = ", limits.total_kept, ")");
  }
}

template <bool kCuda>
std::tuple<at::Tensor, at::Tensor> run(const char* op, const at::Tensor& video_meta,
                                       const at::Tensor* x, int64_t height, int64_t width,
                                       c10::string_view pattern, c10::IntArrayRef block,
                                       int64_t seed, int64_t total_kept, int64_t max_frames) {
  const MaskGeometry g = geometry_of(op, height, width, pattern, block);
  MetaLimits limits{max_frames, kInt64Max, total_kept};
  int64_t row_bytes = 0;
  at::Tensor packed;
  if (x != nullptr) {
    TORCH_CHECK(x->dim() == 2 && x->is_contiguous() && x->device() == video_meta.device(), op,
                ": x must be contiguous [num_tokens, D] rows on video_meta's device");
    limits.num_tokens = x->size(0);
    row_bytes = x->size(1) * x->element_size();
    packed = at::empty({total_kept, x->size(1)}, x->options());
  }
  check_video_meta(op, video_meta, g, limits, seed);
  at::Tensor keep_idx = at::empty({total_kept}, video_meta.options());
  const auto s = static_cast<uint32_t>(seed);
  const int64_t* meta = video_meta.const_data_ptr<int64_t>();
  const void* rows = x != nullptr ? x->const_data_ptr() : nullptr;
  void* out = x != nullptr ? packed.mutable_data_ptr() : nullptr;
  if constexpr (kCuda) {
#ifdef VIDCORE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(video_meta.device());
    const int64_t scratch_bytes = make_mask_scratch_bytes(video_meta.size(0), g, max_frames,
                                                          row_bytes);
    TORCH_CHECK(scratch_bytes >= 0, op, ": max_frames = ", max_frames, " with ", height, " x ",
                width, " tokens per frame is too large a bound to plan the launch for");
    at::Tensor scratch = at::empty({scratch_bytes}, video_meta.options().dtype(at::kByte));
    C10_CUDA_CHECK(launch_mask_and_pack(meta, video_meta.size(0), g, s, limits,
                                        scratch.mutable_data_ptr(), rows, row_bytes,
                                        keep_idx.mutable_data_ptr<int64_t>(), out,
                                        c10::cuda::getCurrentCUDAStream()));
#endif
  } else if (x != nullptr) {
    mask_and_pack_cpu(meta, video_meta.size(0), g, s, rows, row_bytes,
                      keep_idx.mutable_data_ptr<int64_t>(), out);
  } else {
    make_mask_cpu(meta, video_meta.size(0), g, s, keep_idx.mutable_data_ptr<int64_t>());
  }
  return {packed, keep_idx};
}

template <bool kCuda>
at::Tensor make_mask_impl(const at::Tensor& video_meta, int64_t height, int64_t width,
                          c10::string_view pattern, c10::IntArrayRef block, int64_t seed,
                          int64_t total_kept, int64_t max_frames) {
  return std::get<1>(run<kCuda>("make_mask", video_meta, nullptr, height, width, pattern, block,
                                seed, total_kept, max_frames));
}

template <bool kCuda>
std::tuple<at::Tensor, at::Tensor> mask_and_pack_impl(
    const at::Tensor& x, const at::Tensor& video_meta, int64_t height, int64_t width,
    c10::string_view pattern, c10::IntArrayRef block, int64_t seed, int64_t total_kept,
    int64_t max_frames) {
  return run<kCuda>("mask_and_pack", video_meta, &x, height, width, pattern, block, seed,
                    total_kept, max_frames);
}

}  // namespace

TORCH_LIBRARY_IMPL(vidcore, CPU, m) {
  m.impl("make_mask", &make_mask_impl<false>);
  m.impl("mask_and_pack", &mask_and_pack_impl<false>);
}

#ifdef VIDCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(vidcore, CUDA, m) {
  m.impl("make_mask", &make_mask_impl<true>);
  m.impl("mask_and_pack", &mask_and_pack_impl<true>);
}
#endif

}  // namespace vidcore
