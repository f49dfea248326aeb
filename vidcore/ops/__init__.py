"""Public vidcore ops. Each function validates its arguments once and calls one
`torch.ops.vidcore.*` op; `FAST_KERNELS` records which device has which fast kernel."""
from vidcore._backends import EXTENSION  # noqa: F401  loading _C registers its C++/CUDA kernels
from vidcore.ops.merge_attention_states import merge_attention_states
from vidcore.ops.unit_keys import unit_keys

__all__ = ["merge_attention_states", "unit_keys", "FAST_KERNELS"]

# op name -> {device type: (implementation, what provides it)}; every other device runs the
# reference. The backward ops listed here are registered by their forward's module.
FAST_KERNELS: dict[str, dict[str, tuple[str, str]]] = {
    "unit_keys": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "merge_attention_states": {"cuda": ("Triton", "triton")},
    "merge_attention_states_backward": {"cuda": ("Triton", "triton")},
}
