"""embedplug::masked_infonce and ::masked_infonce_mean: fused kernels vs the pure-torch reference, gradients,
opcheck, compile, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _support import requires_cuda, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.ops import masked_infonce, masked_infonce_mean
from embedplug.reference.masked_infonce import masked_infonce as reference_infonce

fused_op = torch.ops.embedplug.masked_infonce if hasattr(torch.ops.embedplug, "masked_infonce") else None
fused_mean_op = torch.ops.embedplug.masked_infonce_mean if hasattr(torch.ops.embedplug, "masked_infonce_mean") else None

# (margin_strategy, margin, anchor_anchor, positive_anchor, positive-candidate block, exclude_self, guide)
# with the positive-candidate block as "none", "positives" (K = N, GIST) or "all" (K = M, MNRL doc_to_doc).
OPTION_SETS = {
    "mnrl": ("none", 0.0, False, False, "none", True, "none"),
    "mnrl_all_directions": ("none", 0.0, True, True, "all", True, "none"),
    "gist_default": ("absolute", 0.0, True, False, "positives", False, "guide"),
    "gist_margin": ("absolute", 0.1, True, False, "positives", False, "guide"),
    "gist_relative": ("relative", 0.3, False, False, "positives", False, "guide"),
    "gist_negative_margin": ("absolute", -0.05, True, True, "all", True, "guide"),
    "self_guided": ("absolute", 0.05, True, False, "positives", False, "self"),
}


def make_inputs(n, columns, dim, dtype, generator, guide_dim=6):
    anchors = F.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=1)
    candidates = F.normalize(torch.randn(n * columns, dim, generator=generator, dtype=dtype), dim=1)
    guide_anchors = F.normalize(torch.randn(n, guide_dim, generator=generator, dtype=dtype), dim=1)
    # Guide positives correlated with their anchors, so the threshold t_i sits among the candidates.
    guide_candidates = torch.randn(n * columns, guide_dim, generator=generator, dtype=dtype)
    guide_candidates[:n] += 2 * guide_anchors
    return anchors, candidates, guide_anchors, F.normalize(guide_candidates, dim=1)


def op_arguments(option_set, anchors, candidates, guide_anchors, guide_candidates, scale=20.0):
    strategy, margin, anchor_anchor, positive_anchor, block, exclude_self, guide = OPTION_SETS[option_set]
    columns = {"none": 0, "positives": anchors.shape[0], "all": candidates.shape[0]}[block]
    guides = (guide_anchors, guide_candidates) if guide == "guide" else (None, None)
    return (anchors, candidates, *guides, scale, strategy, margin, anchor_anchor, positive_anchor, columns, exclude_self)


def assert_fused_matches_reference(arguments, rtol, atol):
    anchors, candidates = (t.detach().requires_grad_() for t in arguments[:2])
    arguments = (anchors, candidates, *arguments[2:])
    loss, lse = fused_op(*arguments)
    expected_loss, expected_lse = reference_infonce(*arguments)
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(lse, expected_lse, rtol=rtol, atol=atol)
    weights = torch.randn(loss.shape, dtype=loss.dtype, generator=torch.Generator().manual_seed(0))
    fused_grads = torch.autograd.grad((loss * weights).sum(), (anchors, candidates))
    reference_grads = torch.autograd.grad((expected_loss * weights).sum(), (anchors, candidates))
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        # Gradient entries are sums of terms of size scale * |c|; cancellation makes a relative
        # tolerance per entry meaningless, so it is taken relative to the largest entry.
        gradient_atol = max(atol, rtol * reference_grad.abs().max().item())
        torch.testing.assert_close(fused_grad, reference_grad, rtol=rtol, atol=gradient_atol)


@requires_extension
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
@pytest.mark.parametrize("n", [1, 2, 7, 255, 256, 257, 600])
def test_fused_matches_reference_float64(option_set, n):
    generator = torch.Generator().manual_seed(n)
    inputs = make_inputs(n, 2, 12, torch.float64, generator)
    assert_fused_matches_reference(op_arguments(option_set, *inputs), rtol=1e-10, atol=1e-11)


@requires_extension
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_fused_matches_reference_float32(option_set):
    generator = torch.Generator().manual_seed(11)
    inputs = make_inputs(300, 3, 32, torch.float32, generator)
    assert_fused_matches_reference(op_arguments(option_set, *inputs, scale=50.0), rtol=1e-5, atol=1e-5)


@requires_extension
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    columns=st.integers(1, 3),
    dim=st.integers(1, 9),
    option_set=st.sampled_from(list(OPTION_SETS)),
    scale=st.floats(0.5, 100.0),
    seed=st.integers(0, 2**16),
)
def test_fused_matches_reference_property(n, columns, dim, option_set, scale, seed):
    inputs = make_inputs(n, columns, dim, torch.float64, torch.Generator().manual_seed(seed))
    arguments = op_arguments(option_set, *inputs, scale=scale)
    assert_fused_matches_reference(arguments, rtol=1e-9, atol=1e-9)
    assert_mean_matches_reference(arguments, rtol=1e-9, atol=1e-11)


@requires_extension
@pytest.mark.parametrize("option_set", ["mnrl_all_directions", "gist_margin", "self_guided"])
def test_gradcheck_float64(option_set):
    generator = torch.Generator().manual_seed(3)
    anchors, candidates, guide_anchors, guide_candidates = make_inputs(9, 2, 5, torch.float64, generator)
    arguments = op_arguments(option_set, anchors, candidates, guide_anchors, guide_candidates, scale=3.0)
    if option_set == "self_guided":
        # The student is its own guide here, so a finite-difference step could flip a mask
        # decision; a large margin keeps every decision far from its threshold.
        arguments = arguments[:6] + (1.5,) + arguments[7:]

    def loss_of(a, c):
        return fused_op(a, c, *arguments[2:])[0]

    assert torch.autograd.gradcheck(
        loss_of, (anchors.requires_grad_(), candidates.requires_grad_()), eps=1e-6, atol=1e-6
    )


@requires_extension
@pytest.mark.parametrize("option_set", ["mnrl", "gist_default", "self_guided"])
def test_opcheck(option_set):
    generator = torch.Generator().manual_seed(4)
    anchors, candidates, guide_anchors, guide_candidates = make_inputs(20, 2, 8, torch.float32, generator)
    arguments = op_arguments(
        option_set, anchors.requires_grad_(), candidates.requires_grad_(), guide_anchors, guide_candidates
    )
    torch.library.opcheck(fused_op.default, arguments)
    _, lse = fused_op(*arguments)
    detached = (anchors.detach(), candidates.detach(), *arguments[2:])
    torch.library.opcheck(
        torch.ops.embedplug._masked_infonce_backward.default, (torch.randn(20), *detached[:4], lse, *detached[4:])
    )


@requires_extension
def test_torch_compile_fullgraph_matches_eager():
    from embedplug.functional import gist_embed_loss

    torch._dynamo.reset()
    compiled = torch.compile(gist_embed_loss, fullgraph=True, backend="aot_eager")
    generator = torch.Generator().manual_seed(5)
    anchor, positive = (torch.randn(32, 16, generator=generator, requires_grad=True) for _ in range(2))
    guide_anchor, guide_positive = torch.randn(32, 8, generator=generator), torch.randn(32, 8, generator=generator)
    kwargs = dict(guide_anchor=guide_anchor, guide_positive=guide_positive, margin=0.1)
    eager = gist_embed_loss(anchor, positive, **kwargs)
    eager_grads = torch.autograd.grad(eager, (anchor, positive))
    result = compiled(anchor, positive, **kwargs)
    compiled_grads = torch.autograd.grad(result, (anchor, positive))
    torch.testing.assert_close(result, eager)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchor_identical_to_positive_keeps_self_pairs_at_zero_margin(dtype):
    # a_i == p_i makes every self-similarity equal the threshold t_i exactly: strict > keeps them at
    # margin 0 (as sentence-transformers does), any positive margin drops them. Rows are spread over
    # several tiles so that the decision cannot depend on which GEMM produced the value.
    generator = torch.Generator().manual_seed(6)
    n = 600
    anchors = F.normalize(torch.randn(n, 32, generator=generator, dtype=dtype), dim=1)
    guide = F.normalize(torch.randn(n, 16, generator=generator, dtype=dtype), dim=1)
    for margin, self_pairs_kept in ((0.0, True), (1e-6, False)):
        arguments = (anchors, anchors.clone(), guide, guide.clone(), 100.0, "absolute", margin, True, False, n, False)
        loss, lse = fused_op(*arguments)
        expected_loss, _ = reference_infonce(*arguments)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
        # The positive, the anchor itself and the positive itself all score 100; every other
        # candidate is masked or far below.
        expected_terms = 3.0 if self_pairs_kept else 1.0
        torch.testing.assert_close(loss, torch.full_like(loss, expected_terms).log(), rtol=1e-4, atol=1e-4)


@requires_extension
def test_self_guided_equals_guided_by_the_student():
    generator = torch.Generator().manual_seed(7)
    anchors, candidates, _, _ = make_inputs(100, 2, 16, torch.float64, generator)
    options = (30.0, "relative", 0.2, True, False, 100, False)
    self_guided, _ = fused_op(anchors, candidates, None, None, *options)
    guided, _ = fused_op(anchors, candidates, anchors.clone(), candidates.clone(), *options)
    torch.testing.assert_close(self_guided, guided, rtol=0, atol=0)


@requires_extension
def test_masking_drops_exactly_the_entries_above_the_threshold():
    # Hand-made guide: row 0's positive scores 0.5 and column 1 scores 0.9 (dropped), row 1's
    # positive scores 0.9 and column 0 scores 0.5 (kept).
    anchors = torch.eye(2, dtype=torch.float64)
    candidates = torch.eye(2, dtype=torch.float64)
    guide_anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    guide_candidates = torch.tensor([[0.5, 0.0], [0.9, 0.9]], dtype=torch.float64)
    loss, _ = fused_op(anchors, candidates, guide_anchors, guide_candidates, 1.0, "absolute", 0.0, False, False, 0, True)
    # Row 0: only its positive (logit 1) is left -> loss 0. Row 1: logits 0 (kept) and 1 (positive).
    expected = torch.tensor([0.0, torch.log1p(torch.exp(torch.tensor(-1.0, dtype=torch.float64))).item()])
    torch.testing.assert_close(loss, expected.to(torch.float64))


@requires_extension
def test_non_contiguous_input_gives_same_result():
    generator = torch.Generator().manual_seed(8)
    wide = torch.randn(50, 32, generator=generator)
    candidates = torch.randn(100, 16, generator=generator)
    options = (20.0, "absolute", 0.0, True, False, 50, False)
    strided, _ = fused_op(wide[:, ::2], candidates, None, None, *options)
    contiguous, _ = fused_op(wide[:, ::2].contiguous(), candidates, None, None, *options)
    assert torch.equal(strided, contiguous)


@requires_extension
def test_nan_input_gives_nan_loss_for_the_affected_rows():
    anchors = F.normalize(torch.randn(10, 4), dim=1)
    candidates = F.normalize(torch.randn(10, 4), dim=1)
    anchors[3, 1] = float("nan")
    loss, _ = fused_op(anchors, candidates, None, None, 20.0, "none", 0.0, False, False, 0, True)
    assert torch.isnan(loss[3])
    assert torch.isfinite(loss[torch.arange(10) != 3]).all()


@requires_extension
def test_cpp_checks_raise_python_errors_not_crashes():
    x = torch.randn(4, 3)
    options = (20.0, "none", 0.0, False, False, 0, True)
    with pytest.raises(RuntimeError, match="2-D"):
        fused_op(torch.randn(4), x, None, None, *options)
    with pytest.raises(TypeError, match="float32 or float64"):
        fused_op(x.half(), x.half(), None, None, *options)
    with pytest.raises(RuntimeError, match="multiple"):
        fused_op(x, torch.randn(6, 3), None, None, *options)
    with pytest.raises(RuntimeError, match="same width"):
        fused_op(x, torch.randn(4, 5), None, None, *options)
    with pytest.raises(RuntimeError, match="empty batch"):
        fused_op(x[:0], x[:0], None, None, *options)
    with pytest.raises(RuntimeError, match="both"):
        fused_op(x, x, x, None, 20.0, "absolute", 0.0, False, False, 0, True)
    with pytest.raises(RuntimeError, match="margin_strategy is 'none'"):
        fused_op(x, x, x, x, *options)
    with pytest.raises(RuntimeError, match="unknown margin_strategy"):
        fused_op(x, x, None, None, 20.0, "soft", 0.0, False, False, 0, True)
    with pytest.raises(RuntimeError, match="guide embeddings must be"):
        fused_op(x, x, torch.randn(3, 2), torch.randn(4, 2), 20.0, "absolute", 0.0, False, False, 0, True)
    with pytest.raises(RuntimeError, match="scale"):
        fused_op(x, x, None, None, -1.0, "none", 0.0, False, False, 0, True)
    with pytest.raises(RuntimeError, match="positive_candidate_columns"):
        fused_op(x, x, None, None, 20.0, "none", 0.0, False, False, 5, True)


def test_dispatch_upcasts_half_precision():
    generator = torch.Generator().manual_seed(9)
    anchors, candidates = torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)
    loss, _ = masked_infonce(anchors.half(), candidates.half(), scale=5.0)
    assert loss.dtype == torch.float32
    expected, _ = reference_infonce(
        anchors.half().float(), candidates.half().float(), None, None, 5.0, "none", 0.0, False, False, 0, True
    )
    torch.testing.assert_close(loss, expected)


def assert_mean_matches_reference(arguments, rtol, atol):
    """The mean op (gradient computed in its forward) against autograd through the reference."""
    anchors, candidates = (t.detach().requires_grad_() for t in arguments[:2])
    arguments = (anchors, candidates, *arguments[2:])
    loss, grad_anchors, grad_candidates = fused_mean_op(*arguments, True)
    expected = reference_infonce(*arguments)[0].mean()
    torch.testing.assert_close(loss, expected, rtol=rtol, atol=atol, equal_nan=True)
    for fused_grad, reference_grad in zip((grad_anchors, grad_candidates), torch.autograd.grad(expected, (anchors, candidates))):
        gradient_atol = max(atol, rtol * reference_grad.abs().nan_to_num().max().item())
        torch.testing.assert_close(fused_grad, reference_grad, rtol=rtol, atol=gradient_atol, equal_nan=True)


@requires_extension
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
@pytest.mark.parametrize("n", [1, 2, 7, 127, 128, 129, 300])
def test_mean_op_matches_reference_float64(option_set, n):
    # 128-row strips: 127, 128 and 129 rows end a strip early, exactly and one row into the next.
    inputs = make_inputs(n, 2, 12, torch.float64, torch.Generator().manual_seed(n))
    assert_mean_matches_reference(op_arguments(option_set, *inputs), rtol=1e-10, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_mean_op_matches_reference_float32(option_set):
    inputs = make_inputs(300, 3, 32, torch.float32, torch.Generator().manual_seed(11))
    assert_mean_matches_reference(op_arguments(option_set, *inputs, scale=50.0), rtol=1e-5, atol=1e-6)


@requires_extension
@pytest.mark.parametrize("option_set", ["mnrl_all_directions", "gist_default"])
def test_mean_op_with_more_than_32k_columns_uses_short_strips_and_matches(option_set):
    # 100 rows x 330 columns of candidates: over 32K columns per row, so 64-row strips.
    inputs = make_inputs(100, 330, 4, torch.float64, torch.Generator().manual_seed(12), guide_dim=3)
    assert_mean_matches_reference(op_arguments(option_set, *inputs), rtol=1e-10, atol=1e-12)


@requires_extension
def test_mean_op_without_grad_gives_the_same_loss_and_no_gradient():
    inputs = make_inputs(50, 2, 8, torch.float32, torch.Generator().manual_seed(13))
    arguments = op_arguments("gist_margin", *inputs)
    loss, grad_anchors, grad_candidates = fused_mean_op(*arguments, False)
    with_grad, _, _ = fused_mean_op(*arguments, True)
    assert torch.equal(loss, with_grad)
    assert grad_anchors.shape == (0, 8) and grad_candidates.shape == (0, 8)
    with torch.no_grad():
        assert torch.equal(masked_infonce_mean(*inputs[:2], *arguments[2:4], **_keyword_options(arguments)), loss)


@requires_extension
@pytest.mark.parametrize("option_set", ["mnrl_all_directions", "gist_margin", "self_guided"])
def test_mean_gradcheck_float64(option_set):
    anchors, candidates, guide_anchors, guide_candidates = make_inputs(9, 2, 5, torch.float64, torch.Generator().manual_seed(3))
    arguments = op_arguments(option_set, anchors, candidates, guide_anchors, guide_candidates, scale=3.0)
    if option_set == "self_guided":
        arguments = arguments[:6] + (1.5,) + arguments[7:]  # no mask decision near its threshold

    def loss_of(a, c):
        return masked_infonce_mean(a, c, *arguments[2:4], **_keyword_options(arguments))

    assert torch.autograd.gradcheck(loss_of, (anchors.requires_grad_(), candidates.requires_grad_()), eps=1e-6, atol=1e-6)


@requires_extension
@pytest.mark.parametrize("option_set", ["mnrl", "gist_default", "self_guided"])
@pytest.mark.parametrize("compute_grad", [True, False])
def test_mean_opcheck(option_set, compute_grad):
    anchors, candidates, guide_anchors, guide_candidates = make_inputs(20, 2, 8, torch.float32, torch.Generator().manual_seed(4))
    arguments = op_arguments(option_set, anchors.requires_grad_(compute_grad), candidates.requires_grad_(compute_grad), guide_anchors, guide_candidates)
    torch.library.opcheck(fused_mean_op.default, (*arguments, compute_grad))


@requires_extension
def test_mean_op_refuses_double_backward_and_backward_without_its_gradient():
    inputs = make_inputs(10, 1, 4, torch.float64, torch.Generator().manual_seed(14))
    anchors, candidates = (t.requires_grad_() for t in inputs[:2])
    loss = masked_infonce_mean(anchors, candidates, scale=5.0)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, anchors, create_graph=True)
    loss, _, _ = fused_mean_op(anchors, candidates, None, None, 5.0, "none", 0.0, False, False, 0, True, False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.backward()


@requires_extension
def test_mean_op_nan_input_gives_nan_loss_and_gradient_like_the_reference():
    anchors = F.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(15)), dim=1)
    candidates = F.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(16)), dim=1)
    anchors[3, 1] = float("nan")
    arguments = (anchors, candidates, None, None, 20.0, "none", 0.0, False, False, 0, True)
    assert torch.isnan(fused_mean_op(*arguments, False)[0])
    assert_mean_matches_reference(arguments, rtol=1e-5, atol=1e-6)


def test_mean_dispatch_upcasts_half_precision_and_returns_half_gradients():
    generator = torch.Generator().manual_seed(17)
    anchors = torch.randn(16, 8, generator=generator).half().requires_grad_()
    candidates = torch.randn(16, 8, generator=generator).half().requires_grad_()
    loss = masked_infonce_mean(anchors, candidates, scale=5.0)
    loss.backward()
    assert loss.dtype == torch.float32 and anchors.grad.dtype == torch.float16
    a32, c32 = (t.detach().float().requires_grad_() for t in (anchors, candidates))
    expected = reference_infonce(a32, c32, None, None, 5.0, "none", 0.0, False, False, 0, True)[0].mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(anchors.grad, a32.grad.half())


@requires_cuda
@requires_extension
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(10)
    inputs = make_inputs(300, 2, 32, torch.float32, generator)
    arguments = op_arguments("gist_margin", *inputs)
    loss, _ = masked_infonce(*(t.cuda() for t in inputs), **_keyword_options(arguments))
    expected, _ = masked_infonce(*inputs, **_keyword_options(arguments))
    torch.testing.assert_close(loss.cpu(), expected, rtol=1e-4, atol=1e-5)


def _keyword_options(arguments):
    names = ("scale", "margin_strategy", "margin", "anchor_anchor", "positive_anchor", "positive_candidate_columns", "exclude_self")
    return dict(zip(names, arguments[4:]))
