"""Triton kernels of vidcore, installed as `vidcore.kernels` (never as a top-level `kernels`)."""
