"""vidcore.ops.interleave_pack: text segments and visual tokens scattered into packed sequences,
exact on every backend, gradients exact gathers."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore.ops import interleave_pack, plan_interleave
from vidcore.testing import assert_exact, assert_raises_cleanly, opcheck

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.uint8]
# MiniGPT4-Video-like: per frame "<Img>" text, 4 visual tokens, a subtitle; then the question
MINIGPT4 = [(0, 0, 2), (0, 1, 4), (0, 0, 3), (0, 1, 4), (0, 0, 1), (0, 0, 5),
            (1, 0, 2), (1, 1, 4), (1, 0, 0), (1, 1, 4), (1, 0, 6)]
# ST-LLM-like: [prompt | kept video tokens | prompt + answer], ragged video lengths
STLLM = [(0, 0, 3), (0, 1, 7), (0, 0, 4), (1, 0, 3), (1, 1, 2), (1, 0, 6)]
CASES = [
    pytest.param(MINIGPT4, id="minigpt4-2samples"),
    pytest.param(STLLM, id="stllm-2samples"),
    pytest.param([(0, 1, 5)], id="visual-only"),
    pytest.param([(0, 0, 5)], id="text-only"),
    pytest.param([(1, 0, 2), (3, 1, 1)], id="empty-samples-0-and-2"),
    pytest.param([(0, 0, 0), (0, 1, 0)], id="zero-rows"),
    pytest.param([], id="no-segments"),
]


def payload(rows, dim, dtype, device="cpu"):
    if dtype == torch.uint8:
        return torch.randint(0, 255, (rows, dim), dtype=dtype, device=device)
    return torch.randn(rows, dim, device=device).to(dtype)


def inputs(segments, dim=8, dtype=torch.float32, device="cpu"):
    totals = [sum(n for _, kind, n in segments if kind == k) for k in (0, 1)]
    text, visual = (payload(n, dim, dtype, device) for n in totals)
    labels = torch.randint(-100, 50, (totals[0],), device=device)
    return text, visual, labels


def seed_way(text, visual, segments, text_labels, batch_size=None):
    """The seeds' per-sample splicing (prompt_wrap / concat_emb_input_output): walk the segments,
    slice text and visual in order, torch.cat per sample; labels -100 at visual rows."""
    samples = (segments[-1][0] + 1 if segments else 0) if batch_size is None else batch_size
    rows, labels = [[] for _ in range(samples)], [[] for _ in range(samples)]
    used, position, spans = [0, 0], 0, []
    for sample, kind, length in segments:
        rows[sample].append((text, visual)[kind][used[kind]:used[kind] + length])
        if kind == 1:
            spans.append((position, position + length))
            labels[sample].append(torch.full((length,), -100))
        else:
            labels[sample].append(text_labels[used[0]:used[0] + length].cpu())
        used[kind] += length
        position += length
    lengths = [sum(r.shape[0] for r in sample_rows) for sample_rows in rows]

    def flat(parts, empty):
        return torch.cat([p for per_sample in parts for p in per_sample] or [empty])

    none = torch.zeros(0, dtype=torch.int64)
    return {
        "embeds": flat(rows, text[:0]).cpu(),
        "cu_seqlens": torch.tensor([sum(lengths[:b]) for b in range(samples + 1)], dtype=torch.int32),
        "max_seqlen": max(lengths, default=0),
        "position_ids": flat([[torch.arange(n)] for n in lengths], none),
        "labels": flat(labels, none).long(),
        "visual_spans": torch.tensor(spans, dtype=torch.int64).reshape(-1, 2),
        "visual_index": torch.cat([torch.arange(a, b) for a, b in spans] or [none]),
    }


def assert_matches_seed_way(batch, text, visual, segments, text_labels, batch_size=None):
    for name, value in seed_way(text, visual, segments, text_labels, batch_size).items():
        actual = getattr(batch, name)
        if isinstance(value, torch.Tensor):
            assert_exact(actual.cpu(), value)
        else:
            assert actual == value, name


def test_reference_semantics_by_hand():
    text = torch.arange(5.0)[:, None]
    visual = -torch.arange(1.0, 5.0)[:, None]
    segments = [(0, 0, 2), (0, 1, 2), (0, 0, 1), (1, 1, 2), (1, 0, 2)]
    for backend in ("auto", "torch"):
        batch = interleave_pack(text, visual, segments, torch.arange(10, 15), backend=backend)
        assert batch.embeds.flatten().tolist() == [0, 1, -1, -2, 2, -3, -4, 3, 4]
        assert batch.cu_seqlens.tolist() == [0, 5, 9] and batch.max_seqlen == 5
        assert batch.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
        assert batch.labels.tolist() == [10, 11, -100, -100, 12, -100, -100, 13, 14]
        assert batch.visual_spans.tolist() == [[2, 4], [5, 7]]
        assert batch.visual_index.tolist() == [2, 3, 5, 6]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("segments", CASES)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matches_seed_way(segments, dtype, backend, device):
    text, visual, labels = inputs(segments, 24, dtype, device)
    batch = interleave_pack(text, visual, segments, labels, backend=backend)
    assert_matches_seed_way(batch, text, visual, segments, labels)
    assert batch.embeds.device == text.device and batch.cu_seqlens.device == text.device


def test_no_labels_means_no_loss_anywhere():
    text, visual, _ = inputs(STLLM)
    batch = interleave_pack(text, visual, torch.tensor(STLLM))
    assert (batch.labels == -100).all()


def test_batch_size_adds_trailing_empty_samples():
    text, visual, labels = inputs(STLLM)
    batch = interleave_pack(text, visual, STLLM, labels, batch_size=4)
    assert_matches_seed_way(batch, text, visual, STLLM, labels, batch_size=4)
    assert batch.cu_seqlens.tolist()[-3:] == [25, 25, 25]


segment_lists = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 9)),
                         max_size=12).map(lambda s: sorted(s, key=lambda seg: seg[0]))


@given(segments=segment_lists, dim=st.integers(0, 40), dtype=st.sampled_from(DTYPES),
       backend=st.sampled_from(["auto", "torch"]))
def test_property_matches_seed_way(segments, dim, dtype, backend):
    text, visual, labels = inputs(segments, dim, dtype)
    batch = interleave_pack(text, visual, segments, labels, backend=backend)
    assert_matches_seed_way(batch, text, visual, segments, labels)


@pytest.mark.parametrize("segments", CASES)
def test_backward_is_exact_gather(segments, device):
    text, visual, _ = inputs(segments, 16, torch.bfloat16, device)
    text.requires_grad_(), visual.requires_grad_()
    batch = interleave_pack(text, visual, segments)
    grad = torch.randn_like(batch.embeds)
    batch.embeds.backward(grad)
    # source[r] = the row of cat([text, visual]) that output row r came from
    num_text, num_visual = text.shape[0], visual.shape[0]
    ids = (torch.arange(num_text)[:, None], num_text + torch.arange(num_visual)[:, None])
    source = seed_way(*ids, segments, torch.zeros(num_text, dtype=torch.int64))["embeds"][:, 0]
    grad_rows = grad[source.argsort().to(device)]
    assert_exact(text.grad, grad_rows[:num_text])
    assert_exact(visual.grad, grad_rows[num_text:])


def test_gradcheck():
    text, visual, _ = (t.double().requires_grad_() for t in inputs(MINIGPT4, 3))
    assert torch.autograd.gradcheck(lambda t, v: interleave_pack(t, v, MINIGPT4).embeds,
                                    (text, visual))


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad, with_labels):
    text, visual, labels = inputs(MINIGPT4, 8, torch.float32, device)
    plan = plan_interleave(MINIGPT4, device=device)
    args = (text.requires_grad_(requires_grad), visual.requires_grad_(requires_grad),
            plan.segment_table, labels if with_labels else None, text.shape[0] + visual.shape[0])
    opcheck(torch.ops.vidcore.interleave_pack.default, args)
    grad = torch.randn(args[-1], 8, device=device)
    opcheck(torch.ops.vidcore.interleave_pack_backward.default,
            (grad, plan.segment_table, text.shape[0], visual.shape[0]))


def test_compile_with_a_plan():
    text, visual, labels = inputs(MINIGPT4, 8)
    plan = plan_interleave(MINIGPT4)

    def embed_and_scale(text, visual, labels):
        batch = interleave_pack(text * 2, visual, plan, labels)
        return batch.embeds + 1, batch.labels, batch.position_ids

    compiled = torch.compile(embed_and_scale, fullgraph=True)
    assert_exact(compiled(text, visual, labels), embed_and_scale(text, visual, labels))


@pytest.mark.parametrize("fn, error, message", [
    (lambda t, v, lab: interleave_pack(t[0], v, STLLM), ValueError, r"text must be 2-D"),
    (lambda t, v, lab: interleave_pack(t, v.double(), STLLM), TypeError,
     r"visual must have dtype in \(float32\)"),
    (lambda t, v, lab: interleave_pack(t, v[:, :3], STLLM), ValueError,
     r"visual must have D=8 columns like text, got \(9, 3\)"),
    (lambda t, v, lab: interleave_pack(t, v.to("meta"), STLLM), ValueError, "visual must be on cpu"),
    (lambda t, v, lab: interleave_pack(t[1:], v, STLLM), ValueError,
     "text has 15 rows but the text segments add up to 16"),
    (lambda t, v, lab: interleave_pack(t, v[1:], STLLM), ValueError,
     "visual has 8 rows but the visual segments add up to 9"),
    (lambda t, v, lab: interleave_pack(t, v, torch.tensor(STLLM).float()), TypeError,
     "segments must be an integer tensor"),
    (lambda t, v, lab: interleave_pack(t, v, torch.tensor(STLLM)[:, :2]), ValueError,
     r"segments must have shape \[S, 3\]"),
    (lambda t, v, lab: interleave_pack(t, v, torch.tensor(STLLM).to("meta")), ValueError,
     "segments must be held on the host"),
    (lambda t, v, lab: interleave_pack(t, v, "abc"), TypeError, "segments must be"),
    (lambda t, v, lab: interleave_pack(t, v, STLLM[3:] + STLLM[:3]), ValueError,
     "segments. sample ids must be >= 0 and non-decreasing"),
    (lambda t, v, lab: interleave_pack(t, v, [(0, 2, 3), *STLLM]), ValueError,
     r"segments. kind must be 0 \(text\) or 1 \(visual\)"),
    (lambda t, v, lab: interleave_pack(t, v, [(0, 0, -1), *STLLM]), ValueError,
     "segments. lengths must be >= 0"),
    (lambda t, v, lab: interleave_pack(t, v, STLLM, lab[1:]), ValueError,
     r"text_labels must have one label per text row \(16\), got 15"),
    (lambda t, v, lab: interleave_pack(t, v, STLLM, lab.int()), TypeError,
     r"text_labels must have dtype in \(int64\)"),
    (lambda t, v, lab: interleave_pack(t, v, STLLM, batch_size=1), ValueError,
     "batch_size must be >= 2"),
    (lambda t, v, lab: interleave_pack(t, v, STLLM, backend="triton"), ValueError,
     "backend must be one of"),
])
def test_bad_input(fn, error, message):
    text, visual, labels = inputs(STLLM)
    with pytest.raises(error, match="interleave_pack: " + message):
        fn(text, visual, labels)


# A valid table for text [3, 4], visual [2, 4]: text rows 0-1, visual rows 2-3, text row 4.
TABLE = [[0, 0, 0, 0], [2, 1, 2, 0], [4, 0, 2, 0]]
HOSTILE = [
    pytest.param([[0, 0, 0, 0], [2, 1, 9, 0], [4, 0, 2, 0]], 5, "text_before must count",
                 id="visual-rows-out-of-range"),
    pytest.param([[0, 0, 0, 0], [2, 1, 2, 0], [4, 0, 0, 0]], 5, "text_before must count",
                 id="text-row-used-twice"),
    pytest.param([[3, 0, 0, 0], [2, 1, 2, 0], [4, 0, 2, 0]], 5, "start at row 0", id="first-start"),
    pytest.param([[0, 0, 0, 0], [4, 1, 2, 0], [2, 0, 2, 0]], 5, "starts must ascend",
                 id="descending"),
    pytest.param([[0, 0, 0, 0], [2, 1, 2, 0], [9, 0, 2, 0]], 5, "starts must ascend",
                 id="start-past-total"),
    pytest.param([[0, 0, 0, 0], [2, 7, 2, 0], [4, 0, 2, 0]], 5, "kinds must be 0 or 1",
                 id="kind"),
    pytest.param([[0, 0, 0, 0], [2, 1, 2, 3], [4, 0, 2, 0]], 5, "seq_start must be in",
                 id="seq-start-after-start"),
    pytest.param([[0, 0, 0, -1], [2, 1, 2, 0], [4, 0, 2, 0]], 5, "seq_start must be in",
                 id="negative-seq-start"),
    pytest.param(TABLE, 6, "total must equal", id="total-too-large"),
    pytest.param(TABLE, -1, "total must equal", id="negative-total"),
    pytest.param([[0, 0, 0, 0], [2, 1, 2, 0]], 5, "text segments must cover", id="too-few-text"),
    pytest.param(torch.zeros(0, 4, dtype=torch.int64), 5, "no segments", id="no-segments"),
    pytest.param(torch.tensor(TABLE)[:, :3], 5, r"int64 \[S, 4\]", id="three-columns"),
    pytest.param(torch.tensor(TABLE).double(), 5, r"int64 \[S, 4\]", id="float-table"),
    pytest.param(torch.tensor(TABLE).t().contiguous().t(), 5, r"int64 \[S, 4\]", id="strided"),
]


@pytest.mark.parametrize("table, total, message", HOSTILE)
def test_direct_calls_with_hostile_tables_raise(table, total, message):
    table = torch.as_tensor(table)
    with pytest.raises(ValueError, match="interleave_pack: .*" + message):
        torch.ops.vidcore.interleave_pack(torch.randn(3, 4), torch.randn(2, 4), table, None, total)
    grad_message = message.replace("total must equal", "total must equal|grad_embeds")
    with pytest.raises(ValueError, match="interleave_pack_backward: .*" + grad_message):
        torch.ops.vidcore.interleave_pack_backward(torch.randn(max(total, 0), 4), table, 3, 2)


@pytest.mark.parametrize("text, visual, labels, message", [
    (torch.randn(3), torch.randn(2, 4), None, "text must be"),
    (torch.randn(3, 4), torch.randn(2, 5), None, "visual must be"),
    (torch.randn(3, 4), torch.randn(2, 4).half(), None, "visual must be"),
    (torch.randn(3, 4), torch.randn(2, 4), torch.zeros(2, dtype=torch.int64), "text_labels must be"),
    (torch.randn(3, 4), torch.randn(2, 4), torch.zeros(3), "text_labels must be"),
    (torch.randn(3, 8)[:, ::2], torch.randn(2, 4), None, "text must be"),
], ids=["text-1d", "visual-width", "visual-dtype", "labels-length", "labels-dtype", "strided"])
def test_direct_calls_with_hostile_tensors_raise(text, visual, labels, message):
    with pytest.raises(ValueError, match="interleave_pack: " + message):
        torch.ops.vidcore.interleave_pack(text, visual, torch.tensor(TABLE), labels, 5)


def test_direct_call_out_of_range_table_raises_in_a_subprocess():
    # without the table check this reads visual row 9 of 2: must raise, never crash
    assert_raises_cleanly(
        "torch.ops.vidcore.interleave_pack(torch.randn(3, 4), torch.randn(2, 4), "
        "torch.tensor([[0, 0, 0, 0], [2, 1, -7, 0], [4, 0, 2, 0]]), None, 5)",
        match="invalid segment_table")


@pytest.mark.slow
def test_int64_offsets_past_2_pow_31_bytes():
    # 2M rows of 1040 bytes: byte offsets pass 2^31 (about 4.4 GB on CPU)
    rows, dim = 1 << 21, 1040
    visual = torch.empty(rows, dim, dtype=torch.uint8)
    visual[-3:] = torch.arange(1, 4, dtype=torch.uint8)[:, None]
    text = torch.full((2, dim), 7, dtype=torch.uint8)
    batch = interleave_pack(text, visual, [(0, 1, rows - 1), (0, 0, 2), (1, 1, 1)])
    assert_exact(batch.embeds[-4:], torch.cat([visual[-2:-1], text, visual[-1:]]))
    assert batch.position_ids[-1].item() == 0 and batch.visual_index[-1].item() == rows + 1


@pytest.mark.cuda_ext
def test_cuda_kernel_matches_reference_and_cpu():
    for dim, dtype in ((1, torch.uint8), (3, torch.bfloat16), (64, torch.bfloat16),
                       (4096, torch.float16)):
        segments = [(sample + 2 * copy, kind, n) for copy in range(3)
                    for sample, kind, n in MINIGPT4]  # six samples
        text, visual, labels = inputs(segments, dim, dtype, "cuda")
        batch = interleave_pack(text, visual, segments, labels)
        reference = interleave_pack(text, visual, segments, labels, backend="torch")
        for fast, ref in zip(batch, reference, strict=True):
            if isinstance(fast, torch.Tensor):
                assert_exact(fast, ref)
            else:
                assert fast == ref
        cpu = interleave_pack(text.cpu(), visual.cpu(), segments, labels.cpu())
        assert_exact(batch.embeds.cpu(), cpu.embeds)


@pytest.mark.cuda_ext
def test_cuda_hostile_table_is_a_device_side_assert():
    assert_raises_cleanly(
        "torch.ops.vidcore.interleave_pack(torch.randn(3, 4, device='cuda'), "
        "torch.randn(2, 4, device='cuda'), torch.tensor([[0, 0, 0, 0], [2, 1, -7, 0], "
        "[4, 0, 2, 0]], device='cuda'), None, 5); torch.cuda.synchronize()",
        match="device-side assert")
