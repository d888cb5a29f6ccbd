"""embedplug::supcon_loss_forward, multi_similarity_loss_forward, circle_loss_forward: fused kernels vs
the pure-torch reference (values, pair counts, gradients for any incoming gradient), float64
gradcheck, opcheck, compile, non-finite rows, argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from _support import assert_compiles_like_eager, label_structures, requires_cuda, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug import _extension
from embedplug import functional as F
from embedplug.reference import labelled_contrastive as reference


@dataclass(frozen=True)
class ContrastiveOp:
    name: str
    options: tuple  # the op's options after (embeddings, labels), before compute_grad

    @property
    def forward(self):
        return getattr(torch.ops.embedplug, self.name)

    @property
    def backward(self):
        return getattr(torch.ops.embedplug, "_" + self.name.replace("_forward", "_backward"))

    def reference(self, embeddings, labels):
        return getattr(reference, self.name)(embeddings, labels, *self.options)

    def fused(self, embeddings, labels, compute_grad=True):
        return self.forward(embeddings, labels, *self.options, compute_grad)[:3]


OPS = [
    ContrastiveOp("supcon_loss_forward", (0.1,)),
    ContrastiveOp("supcon_loss_forward", (1.0,)),
    ContrastiveOp("multi_similarity_loss_forward", (2.0, 50.0, 0.5, None)),
    ContrastiveOp("multi_similarity_loss_forward", (2.0, 50.0, 0.5, 0.1)),
    ContrastiveOp("multi_similarity_loss_forward", (3.0, 10.0, 0.2, 0.0)),
    ContrastiveOp("circle_loss_forward", (0.4, 80.0)),
    ContrastiveOp("circle_loss_forward", (0.25, 16.0)),
]
each_op = pytest.mark.parametrize("op", OPS, ids=[f"{op.name}{op.options}" for op in OPS])


def losses_and_grad(forward, embeddings, labels, weights):
    """(losses, positive_pairs, negative_pairs, d sum(weights * losses) / d embeddings)."""
    x = embeddings.detach().clone().requires_grad_()
    losses, positive, negative = forward(x, labels)
    (grad,) = torch.autograd.grad((losses * weights).sum(), x)
    return losses.detach(), positive, negative, grad


def counted_weights(op, losses, scale=0.3):
    """What the reducer gives the op: scale on the anchors it counts, 0 on the others."""
    if op.name == "multi_similarity_loss_forward":
        return torch.full_like(losses, scale)
    return ((losses > 0) | losses.isnan()).to(losses.dtype) * scale


@requires_extension
@each_op
@pytest.mark.parametrize("n", [1, 2, 7, 64, 65, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference(op, n, dtype):
    generator = torch.Generator().manual_seed(n)
    embeddings = torch.randn(n, 24, generator=generator, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    for name, labels in label_structures(n, generator).items():
        losses, positive, negative = op.fused(embeddings, labels)
        expected, expected_positive, expected_negative = op.reference(embeddings, labels)
        torch.testing.assert_close(losses, expected, **tol, msg=name)
        assert torch.equal(positive, expected_positive) and torch.equal(negative, expected_negative), name


@requires_extension
@each_op
# 2100 rows: full 256-row Gram tiles, diagonal and off-diagonal, and a ragged last tile.
@pytest.mark.parametrize("n, samples_per_class", [(120, 4), (120, 120), (600, 4), (600, 30), (2100, 8)])
@pytest.mark.parametrize("uniform", [False, True], ids=["recomputed", "from_forward"])
def test_backward_matches_reference_autograd(op, n, samples_per_class, uniform):
    # The reducer's gradient (uniform on the counted anchors) reuses the forward's unit gradient;
    # any other incoming gradient recomputes the rows in the backward.
    generator = torch.Generator().manual_seed(samples_per_class)
    labels = (torch.arange(n) // samples_per_class)[torch.randperm(n, generator=generator)]
    embeddings = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    losses = op.reference(embeddings, labels)[0]
    weights = counted_weights(op, losses) if uniform else torch.randn(n, generator=generator, dtype=torch.float64)
    fused = losses_and_grad(op.fused, embeddings, labels, weights)
    expected = losses_and_grad(op.reference, embeddings, labels, weights)
    torch.testing.assert_close(fused, expected, rtol=1e-9, atol=1e-11)


@requires_extension
@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    op=st.sampled_from(OPS),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_fused_equals_reference(labels, op, duplicates, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    n = labels.numel()
    embeddings = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    if duplicates and op.options[-1] != 0.0:
        # Exact copies give equal similarities (SupCon's row maximum on a positive, ties inside a
        # group). With mining_epsilon = 0 a positive and a negative that are copies of one point
        # tie exactly at the miner's strict threshold, and which side wins is decided by the GEMM's
        # last-bit rounding, in PML as here: exact ties are tested on axis vectors instead.
        embeddings = embeddings[torch.randint(0, max(n // 2, 1), (n,), generator=generator)]
    weights = torch.randn(n, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        losses_and_grad(op.fused, embeddings, labels, weights),
        losses_and_grad(op.reference, embeddings, labels, weights),
        rtol=1e-8,
        atol=1e-10,
    )


@requires_extension
@each_op
def test_exact_ties_on_axis_vectors(op):
    # Axis-aligned and opposite unit vectors: every similarity is exactly -1, 0 or 1, so the
    # miner's hardest positive / negative tie with other columns exactly.
    generator = torch.Generator().manual_seed(6)
    basis = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    embeddings = basis[torch.randint(0, 6, (40,), generator=generator)] * torch.randint(1, 4, (40, 1), generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    weights = torch.randn(40, generator=generator, dtype=torch.float64)
    fused = losses_and_grad(op.fused, embeddings, labels, weights)
    expected = losses_and_grad(op.reference, embeddings, labels, weights)
    assert torch.equal(fused[1], expected[1]) and torch.equal(fused[2], expected[2])
    torch.testing.assert_close(fused, expected, rtol=1e-9, atol=1e-11)


@requires_extension
@each_op
def test_gradcheck_float64(op):
    if op.name == "circle_loss_forward":
        # PML's circle loss detaches its relu weights, so its gradient is not the derivative of its
        # value and finite differences disagree by design; the reference comparisons above check
        # that gradient (with the detach) instead.
        pytest.skip("circle loss's gradient holds detached factors constant")
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(12, 5, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    weights = torch.randn(12, generator=generator, dtype=torch.float64)
    # Mining (and circle's relu factors) are piecewise: spread-out random points keep finite
    # differences on one side of every threshold.
    assert torch.autograd.gradcheck(lambda x: (op.fused(x, labels)[0] * weights).sum(), (embeddings,), eps=1e-6, atol=1e-5)


@requires_extension
@each_op
def test_opcheck(op):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 8, generator=generator, requires_grad=True)
    labels = torch.arange(40) // 4
    for compute_grad in (False, True):
        torch.library.opcheck(op.forward.default, (embeddings, labels, *op.options, compute_grad))
    losses, _, _, unit_grad = op.forward(embeddings.detach(), labels, *op.options, True)
    for saved in (unit_grad, unit_grad.new_empty(0)):
        for grad_losses in (torch.randn(40), counted_weights(op, losses)):
            torch.library.opcheck(
                op.backward.default, (grad_losses, embeddings.detach(), labels, losses, saved, *op.options)
            )


@requires_extension
@pytest.mark.parametrize(
    "loss_fn", [F.supervised_contrastive_loss, F.multi_similarity_loss, F.circle_loss], ids=lambda f: f.__name__
)
def test_torch_compile_fullgraph_matches_eager(loss_fn):
    assert_compiles_like_eager(loss_fn)


@requires_extension
@each_op
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_poison_every_anchor(op, bad_value):
    embeddings = torch.randn(10, 4)
    embeddings[3, 1] = bad_value
    labels = torch.arange(10) // 2
    losses, _, _, grad = losses_and_grad(op.fused, embeddings, labels, torch.ones(10))
    # Every row meets the bad column, so every loss is NaN (PML's miner would drop it silently) and
    # every row's gradient holds NaN (an Inf row divides by an infinite norm: 0 where it is finite).
    assert torch.isnan(losses).all() and torch.isnan(grad).any(dim=1).all()
    expected = op.reference(embeddings, labels)[0]
    assert torch.isnan(expected).all()


@requires_extension
def test_cpp_checks_raise_python_errors_not_crashes():
    labels = torch.zeros(4, dtype=torch.long)
    supcon = torch.ops.embedplug.supcon_loss_forward
    with pytest.raises(RuntimeError, match="2-D"):
        supcon(torch.randn(4), labels, 0.1, False)
    with pytest.raises(TypeError, match="supcon_loss_forward: embeddings must be float32 or float64"):
        supcon(torch.randn(4, 3).half(), labels, 0.1, False)
    with pytest.raises(RuntimeError, match="one label per embedding"):
        supcon(torch.randn(5, 3), labels, 0.1, False)
    with pytest.raises(TypeError, match="supcon_loss_forward: labels must be int64"):
        supcon(torch.randn(4, 3), labels.int(), 0.1, False)
    with pytest.raises(RuntimeError, match="empty batch"):
        supcon(torch.randn(0, 3), labels[:0], 0.1, False)
    with pytest.raises(RuntimeError, match="temperature"):
        supcon(torch.randn(4, 3), labels, 0.0, False)
    with pytest.raises(RuntimeError, match="beta"):
        torch.ops.embedplug.multi_similarity_loss_forward(torch.randn(4, 3), labels, 2.0, -1.0, 0.5, None, False)
    with pytest.raises(RuntimeError, match="mining_epsilon"):
        torch.ops.embedplug.multi_similarity_loss_forward(torch.randn(4, 3), labels, 2.0, 1.0, 0.5, float("nan"), False)
    with pytest.raises(RuntimeError, match="gamma"):
        torch.ops.embedplug.circle_loss_forward(torch.randn(4, 3), labels, 0.4, 0.0, False)
    with pytest.raises(RuntimeError, match="grad_losses"):
        torch.ops.embedplug._supcon_loss_backward(torch.randn(3), torch.randn(4, 3), labels, torch.randn(4), torch.empty(0), 0.1)


@requires_cuda
@requires_extension
@each_op
def test_cuda_matches_cpu(op):
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(300, 32, generator=generator)
    labels = torch.randint(0, 40, (300,), generator=generator)
    weights = torch.randn(300, generator=generator)
    on_cuda = losses_and_grad(op.fused, embeddings.cuda(), labels.cuda(), weights.cuda())
    expected = losses_and_grad(op.fused, embeddings, labels, weights)
    torch.testing.assert_close(tuple(t.cpu() for t in on_cuda), expected, rtol=1e-4, atol=1e-5)
