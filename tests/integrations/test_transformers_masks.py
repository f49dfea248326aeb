"""key_intervals_mask against transformers' own dense masks: for every mask transformers builds
(rules x padding x cache offsets), each query's interval is exactly the set of keys sdpa_mask
lets it see, and a mask whose keys have holes is refused; user 4-D masks likewise."""
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

masking_utils = pytest.importorskip("transformers.masking_utils")

from vidcore.integrations import transformers_masks  # noqa: E402
from vidcore.integrations.transformers_masks import (  # noqa: E402
    intervals_from_dense,
    is_key_intervals,
    key_intervals_mask,
)


def expected_intervals(dense: torch.Tensor) -> list | None:
    """Per (row, query) [first, last + 1) of a bool [B, 1, Lq, Lk] mask, [0, 0) when empty, or
    None when some query's keys have a hole. Plain loops: independent of the code under test."""
    out = []
    for row in dense[:, 0].tolist():
        out.append([])
        for keys in row:
            seen = [j for j, v in enumerate(keys) if v]
            if seen and seen != list(range(seen[0], seen[-1] + 1)):
                return None
            out[-1].append([seen[0], seen[-1] + 1] if seen else [0, 0])
    return out


def rule_functions(draw, batch: int, length: int, packable: bool):
    """One of transformers' mask functions, built with its own factories."""
    kinds = ["causal", "bidirectional", "sliding", "sliding_bidirectional", "chunked"]
    kind = draw(st.sampled_from(kinds + (["packed"] if packable else [])))
    window = draw(st.integers(1, 5))
    if kind == "causal":
        return masking_utils.causal_mask_function
    if kind == "bidirectional":
        return masking_utils.bidirectional_mask_function
    if kind == "sliding":
        return masking_utils.sliding_window_causal_mask_function(window)
    if kind == "sliding_bidirectional":
        return masking_utils.sliding_window_bidirectional_mask_function(window)
    if kind == "chunked":
        left_padding = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=batch,
                                                  max_size=batch)))
        return masking_utils.chunked_causal_mask_function(window, left_padding)
    # A packed row: positions restart at 0 at each sequence start.
    starts = [draw(st.lists(st.booleans(), min_size=length, max_size=length)) for _ in range(batch)]
    positions = []
    for row in starts:
        pos, p = [], 0
        for i, start in enumerate(row):
            p = 0 if start or i == 0 else p + 1
            pos.append(p)
        positions.append(pos)
    positions = torch.tensor(positions)
    inner = draw(st.sampled_from([masking_utils.causal_mask_function,
                                  masking_utils.sliding_window_causal_mask_function(window)]))
    packed = masking_utils.find_packed_sequence_indices(positions)
    if packed is None:
        packed = torch.zeros_like(positions)
    return masking_utils.packed_sequence_compatibility_function(inner, positions, packed)


@st.composite
def mask_cases(draw):
    batch = draw(st.integers(1, 3))
    q_length = draw(st.integers(1, 6))
    cached = draw(st.booleans())
    if cached:  # static caches have more slots than tokens; sliding caches drop the oldest
        q_offset = draw(st.integers(0, 5))
        kv_offset = draw(st.integers(0, q_offset))
        kv_length = draw(st.integers(max(1, q_offset - kv_offset + q_length - 2), 12))
    else:
        q_offset, kv_offset, kv_length = 0, 0, q_length
    mask_function = rule_functions(draw, batch, q_length, packable=not cached)
    padding, padded = None, draw(st.sampled_from(["none", "sides", "gaps"]))
    if padded != "none":
        length = max(1, kv_offset + kv_length - draw(st.integers(0, 2)))
        rows, gaps = [], padded == "gaps"
        for _ in range(batch):
            left = draw(st.integers(0, length // 2))
            right = draw(st.integers(0, (length - left) // 2))
            row = [left <= j < length - right for j in range(length)]
            if gaps and length - right - left > 2:  # a gap inside the valid keys
                row[draw(st.integers(left + 1, length - right - 2))] = False
            rows.append(row)
        padding = torch.tensor(rows, dtype=torch.bool)
    if draw(st.booleans()):
        q_offset = torch.tensor(q_offset)  # static caches pass a tensor
    return dict(batch_size=batch, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                kv_offset=kv_offset, mask_function=mask_function, attention_mask=padding)


def check_against_sdpa_mask(case: dict) -> None:
    dense = masking_utils.sdpa_mask(**case, allow_is_causal_skip=False)
    expected = expected_intervals(dense)
    if expected is None:
        with pytest.raises(ValueError, match="not one interval"):
            key_intervals_mask(**case)
        return
    got = key_intervals_mask(**case)
    assert is_key_intervals(got) and got.shape == (case["batch_size"], 1, case["q_length"], 2)
    assert got[:, 0].tolist() == expected


@given(mask_cases())
def test_rule_masks_match_sdpa_mask(case):
    check_against_sdpa_mask(case)


@given(mask_cases())
def test_rule_masks_never_take_the_dense_path(case):
    """transformers' standard rules are read from their structure in O(B (Lq + Lk)): the
    [B, Lq, Lk] evaluation is only for functions no rule describes."""
    original = transformers_masks._dense_intervals
    transformers_masks._dense_intervals = None  # calling it would raise TypeError
    try:
        check_against_sdpa_mask(case)
    finally:
        transformers_masks._dense_intervals = original


@st.composite
def overlay_cases(draw):
    """Masks only the dense path runs: PaliGemma-style block overlays, arbitrary functions."""
    case = draw(mask_cases())
    batch = case["batch_size"]
    length = int(case["q_offset"]) + case["q_length"] + case["kv_length"]
    blocks = torch.tensor(draw(st.lists(st.lists(st.integers(-1, 1), min_size=length,
                                                 max_size=length), min_size=batch,
                                        max_size=batch)))
    period = draw(st.integers(2, 4))
    overlay = draw(st.sampled_from([
        masking_utils.blockwise_overlay(blocks),
        lambda b, h, q, kv: (kv % period) == 0,  # holes unless the causal part covers them
    ]))
    case["mask_function"] = masking_utils.or_masks(case["mask_function"], overlay)
    case["use_vmap"] = draw(st.integers(0, 9)) == 0  # vmap (or_mask_function's way) is slow
    return case


@given(overlay_cases())
def test_overlay_masks_match_sdpa_mask(case):
    check_against_sdpa_mask(case)


def test_prefix_lm_mask_is_one_interval_per_query():
    # PaliGemma: image + prompt (block 0) bidirectional, then a causal suffix, left padding.
    blocks = torch.tensor([[-1, 0, 0, 0, 0, -1, -1, -1]])
    padding = torch.tensor([[False, True, True, True, True, True, True, True]])
    function = masking_utils.or_masks(masking_utils.causal_mask_function,
                                      masking_utils.blockwise_overlay(blocks))
    got = key_intervals_mask(1, 8, 8, mask_function=function, attention_mask=padding,
                             use_vmap=True)
    assert got[0, 0].tolist() == [[0, 0], [1, 5], [1, 5], [1, 5], [1, 5], [1, 6], [1, 7], [1, 8]]


def test_holes_are_refused_naming_the_model_and_the_mask():
    padding = torch.tensor([[True, True, False, True]])
    config = SimpleNamespace(model_type="llama")
    with pytest.raises(ValueError, match=r"llama causal mask with a 2-D attention mask that has "
                                         r"gaps: batch row 0, query 3 sees keys 0-1, 3"):
        key_intervals_mask(1, 4, 4, attention_mask=padding, config=config)


def test_holes_are_refused_on_the_device_under_compile():
    padding = torch.tensor([[True, True, False, True]])
    compiled = torch.compile(lambda p: key_intervals_mask(1, 4, 4, attention_mask=p),
                             backend="eager", fullgraph=True)
    assert compiled(torch.ones(1, 4, dtype=torch.bool)).shape == (1, 1, 4, 2)
    with pytest.raises(RuntimeError, match="not one interval"):
        compiled(padding)


def dense_mask(intervals: list, length: int) -> torch.Tensor:
    keys = torch.arange(length)
    bounds = torch.tensor(intervals)
    return (keys >= bounds[..., :1]) & (keys < bounds[..., 1:])


def test_user_4d_masks_bool_and_float():
    intervals = [[[0, 1], [0, 2], [1, 3], [0, 0]], [[2, 4], [2, 4], [0, 4], [3, 4]]]
    visible = dense_mask(intervals, 4)[:, None]
    for mask in (visible, torch.where(visible, 0.0, torch.finfo(torch.float32).min),
                 torch.where(visible, 0.0, -torch.inf).half()):
        assert intervals_from_dense(mask, 4, "layer")[:, 0].tolist() == intervals
    per_head = visible.expand(2, 3, 4, 4)  # the same on every head
    assert intervals_from_dense(per_head, 4, "layer")[:, 0].tolist() == intervals


@pytest.mark.parametrize("mask, match", [
    (torch.tensor([[[[True, False, True]]]]), "query 0 sees keys 0, 2, which is not one interval"),
    (torch.tensor([[[[0.0, -0.5, 0.0]]]]), "additive bias"),
    (torch.tensor([[[[True, True, False]], [[True, False, False]]]]), "differs between heads"),
    (torch.ones(1, 1, 1, 5, dtype=torch.bool), "5 key columns but the layer has 3 keys"),
])
def test_user_4d_masks_that_vidcore_cannot_run_are_refused(mask, match):
    with pytest.raises(ValueError, match=match):
        intervals_from_dense(mask, 3, "llama LlamaAttention (layer 0)")


def test_user_4d_mask_is_converted_once_per_object():
    mask = dense_mask([[[0, 2], [1, 3]]], 3)[:, None]
    first = intervals_from_dense(mask, 3, "layer")
    assert intervals_from_dense(mask, 3, "layer") is first
    mask[0, 0, 0, 0] = False  # an in-place change is seen
    assert intervals_from_dense(mask, 3, "layer")[0, 0].tolist() == [[1, 2], [1, 3]]
