"""Tiny models, processors and batches shared by the video-QA model tests (the `vqa` fixture)."""
from __future__ import annotations

import types

import pytest
import torch

from vidcore.data.video_qa import SyntheticVideoQA
from vidcore.models.video_qa_task import synthetic_tokenizer
from vidcore.testing import MODEL_TOLERANCES

FRAME_SIZE = 16
WIDTH = 32


def tiny_setup(model_module, processor_class, config_fn, **overrides):
    """(model, processor) with a 32-wide, 2-layer configuration on 16 x 16 frames."""
    tokenizer = synthetic_tokenizer(processor_class)
    config = config_fn(len(tokenizer), tokenizer.convert_tokens_to_ids("<video>"),
                       frame_size=FRAME_SIZE, width=WIDTH, **overrides)
    torch.manual_seed(0)
    model = getattr(model_module, _model_name(processor_class))(config)
    return model, processor_class.for_model(tokenizer, config)


def _model_name(processor_class) -> str:
    return processor_class.__name__.replace("Processor", "ForVideoQA")


def synthetic_batch(processor, batch_size: int = 3, num_frames: int = 4, seed: int = 0,
                    answers: bool = True) -> dict:
    data = SyntheticVideoQA(batch_size, num_frames=num_frames, frame_size=FRAME_SIZE, seed=seed)
    samples = [data[i] for i in range(batch_size)]
    return dict(processor([s.video for s in samples], [s.question for s in samples],
                          [s.answer for s in samples] if answers else None))


def packed_rows(logits: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Logits of either layout as the packed rows [total, V] of every sample in order."""
    if logits.shape[0] == 1 and logits.shape[1] == int(cu_seqlens[-1]):
        return logits[0]
    lengths = torch.diff(cu_seqlens).tolist()
    return torch.cat([logits[b, :n] for b, n in enumerate(lengths)])


def run_both_paths(model, batch: dict, **forward_kwargs) -> dict:
    """Loss parts, packed logits and every parameter gradient, kernels on and off."""
    results = {}
    for use_kernels in (True, False):
        model.use_kernels = use_kernels
        model.zero_grad(set_to_none=True)
        out = model(**batch, **forward_kwargs)
        out.loss.backward()
        results[use_kernels] = {
            "loss": out.loss.detach(), "lm_loss": out.lm_loss.detach(),
            "mvm_loss": None if out.mvm_loss is None else out.mvm_loss.detach(),
            "logits": packed_rows(out.logits.detach(), out.cu_seqlens),
            "cu_seqlens": out.cu_seqlens,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None},
        }
    model.use_kernels = True
    return results


def assert_paths_agree(results: dict) -> None:
    tol = MODEL_TOLERANCES[torch.float32]
    fast, ref = results[True], results[False]
    torch.testing.assert_close(fast["cu_seqlens"], ref["cu_seqlens"])
    for key in ("loss", "lm_loss", "mvm_loss", "logits"):
        if ref[key] is None:
            assert fast[key] is None, key
            continue
        torch.testing.assert_close(fast[key], ref[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
    assert fast["grads"].keys() == ref["grads"].keys()
    for name, grad in ref["grads"].items():
        torch.testing.assert_close(fast["grads"][name], grad, **tol,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.fixture
def vqa():
    return types.SimpleNamespace(tiny_setup=tiny_setup, synthetic_batch=synthetic_batch,
                                 packed_rows=packed_rows, run_both_paths=run_both_paths,
                                 assert_paths_agree=assert_paths_agree)
