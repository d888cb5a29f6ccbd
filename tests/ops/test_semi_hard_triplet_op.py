"""embedplug::semi_hard_triplet_loss_forward: fused kernel vs the pure-torch reference, gradients, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, assert_compiles_like_eager, label_structures, requires_cuda, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug import _extension
from embedplug.ops import semi_hard_triplet_loss_forward
from embedplug.reference.semi_hard import semi_hard_triplet_loss_forward as reference_forward

raw_op = getattr(torch.ops.embedplug, "semi_hard_triplet_loss_forward", None) if _extension.STATUS.loaded else None
fused_backward = getattr(torch.ops.embedplug, "_semi_hard_triplet_loss_backward", None) if _extension.STATUS.loaded else None


def fused_op(embeddings, labels, distance, margin, compute_grad=True):
    """loss_sums from the fused op; compute_grad=True takes the forward-computed gradient whenever
    the incoming gradient is uniform, and recomputes otherwise."""
    return raw_op(embeddings, labels, distance, margin, compute_grad)[0]


def sums_and_grad(forward, embeddings, labels, distance, margin, weights):
    x = embeddings.detach().clone().requires_grad_()
    sums = forward(x, labels, distance, margin)
    (grad,) = torch.autograd.grad((sums * weights).sum(), x)
    return sums.detach(), grad


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 150])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference(distance, n, dtype):
    generator = torch.Generator().manual_seed(n)
    embeddings = torch.randn(n, 24, generator=generator, dtype=dtype)
    # Structures include one big class (sort + binary-search path) and P x 4 (direct-compare path).
    # Each term is a difference of distances (up to ~100 for squared euclidean here), so float32
    # rounding of the distances themselves sets the absolute tolerance.
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    for name, labels in label_structures(n, generator).items():
        sums = fused_op(embeddings, labels, distance, 0.5)
        expected = reference_forward(embeddings, labels, distance, 0.5)
        torch.testing.assert_close(sums, expected, rtol=1e-5, atol=atol, msg=name)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("samples_per_class, n", [(3, 120), (17, 120), (40, 120), (120, 120), (3, 600), (4, 600), (150, 600)])
@pytest.mark.parametrize("uniform", [False, True], ids=["recomputed", "from_forward"])
def test_backward_matches_reference_autograd(distance, samples_per_class, n, uniform):
    # 3 and 17 positives sit on both sides of the direct-compare / binary-search switch; 120 is a
    # single class (every pair falls back to the row minimum). At N = 600 small classes leave at
    # most 1 weight in 32 nonzero, which is applied pair by pair instead of by GEMM.
    generator = torch.Generator().manual_seed(samples_per_class)
    labels = (torch.arange(n) // samples_per_class)[torch.randperm(n, generator=generator)]
    embeddings = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    # A uniform incoming gradient (what the loss gives) takes the gradient computed in the forward;
    # any other one recomputes the choices in the backward.
    weights = torch.full((n,), 0.3, dtype=torch.float64) if uniform else torch.randn(n, generator=generator, dtype=torch.float64)
    margin = 0.5 if distance == "cosine" else 4.0
    fused = sums_and_grad(fused_op, embeddings, labels, distance, margin, weights)
    expected = sums_and_grad(reference_forward, embeddings, labels, distance, margin, weights)
    torch.testing.assert_close(fused, expected, rtol=1e-9, atol=1e-10)


@requires_extension
@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=48),
    distance=st.sampled_from(KERNEL_DISTANCES),
    margin=st.sampled_from([0.0, 0.3, 2.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_property_fused_equals_reference(labels, distance, margin, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    embeddings = torch.randn(labels.numel(), 6, generator=generator, dtype=torch.float64)
    weights = torch.randn(labels.numel(), generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        sums_and_grad(fused_op, embeddings, labels, distance, margin, weights),
        sums_and_grad(reference_forward, embeddings, labels, distance, margin, weights),
        rtol=1e-8,
        atol=1e-9,
    )


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_gradcheck_float64(distance):
    generator = torch.Generator().manual_seed(3)
    # Spread-out points: finite differences must not change which negative is semi-hard.
    embeddings = (torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    margin = 0.7 if distance == "cosine" else 5.0
    assert torch.autograd.gradcheck(lambda x: fused_op(x, labels, distance, margin), (embeddings,), eps=1e-6, atol=1e-5)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_opcheck(distance):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 8, generator=generator, requires_grad=True)
    labels = torch.arange(40) // 4
    for compute_grad in (False, True):
        torch.library.opcheck(raw_op.default, (embeddings, labels, distance, 1.0, compute_grad))
    _, unit_grad = raw_op(embeddings.detach(), labels, distance, 1.0, True)
    for saved in (unit_grad, unit_grad.new_empty(0)):
        for grad_sums in (torch.randn(40), torch.full((40,), 0.25)):
            torch.library.opcheck(fused_backward.default, (grad_sums, embeddings.detach(), labels, saved, distance, 1.0))


@requires_extension
def test_torch_compile_fullgraph_matches_eager():
    from embedplug.functional import batch_semi_hard_triplet_loss

    assert_compiles_like_eager(batch_semi_hard_triplet_loss)


@requires_extension
def test_exact_ties_pick_the_first_negative_like_a_stable_sort():
    # Integer points: distances are exact, so equal negatives are real ties and t = 0 happens
    # (half gradient, torch.maximum's rule).
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).double()
    labels = torch.randint(0, 4, (40,), generator=generator)
    weights = torch.ones(40, dtype=torch.float64)
    for margin in (0.0, 1.0, 2.0):
        fused = sums_and_grad(fused_op, embeddings, labels, "squared_euclidean", margin, weights)
        expected = sums_and_grad(reference_forward, embeddings, labels, "squared_euclidean", margin, weights)
        assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])


@requires_extension
def test_first_of_equal_negatives_gets_the_gradient():
    # Anchor 0 and positive 1 at distance 1; negatives 2 and 3 both at distance 4 (squared): only 2 moves.
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    _, grad = sums_and_grad(fused_op, embeddings, labels, "squared_euclidean", 5.0, weights)
    assert grad[2].abs().sum() > 0 and torch.equal(grad[3], torch.zeros(2, dtype=torch.float64))


@requires_extension
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_become_nan_with_nan_gradient(bad_value):
    embeddings = torch.randn(10, 4)
    embeddings[3, 1] = bad_value
    embeddings.requires_grad_()
    labels = torch.arange(10) // 2
    sums = fused_op(embeddings, labels, "euclidean", 5.0)
    assert torch.isnan(sums).all()
    (grad,) = torch.autograd.grad(sums.sum(), embeddings)
    assert torch.isnan(grad).all()


@requires_extension
def test_cpp_checks_raise_python_errors_not_crashes():
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="2-D"):
        raw_op(torch.randn(4), labels, "euclidean", 1.0, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        raw_op(torch.randn(4, 3).half(), labels, "euclidean", 1.0, False)
    with pytest.raises(RuntimeError, match="one label per embedding"):
        raw_op(torch.randn(5, 3), labels, "euclidean", 1.0, False)
    with pytest.raises(TypeError, match="int64"):
        raw_op(torch.randn(4, 3), labels.int(), "euclidean", 1.0, False)
    with pytest.raises(RuntimeError, match="unknown distance"):
        raw_op(torch.randn(4, 3), labels, "manhattan", 1.0, False)
    with pytest.raises(RuntimeError, match="empty batch"):
        raw_op(torch.randn(0, 3), labels[:0], "euclidean", 1.0, False)
    with pytest.raises(RuntimeError, match="grad_sums"):
        fused_backward(torch.randn(3), torch.randn(4, 3), labels, torch.empty(0), "euclidean", 1.0)


def test_dispatch_upcasts_half_precision():
    embeddings = torch.randn(20, 8).half()
    labels = torch.arange(20) // 4
    sums = semi_hard_triplet_loss_forward(embeddings, labels, "euclidean", 5.0)
    assert sums.dtype == torch.float32
    torch.testing.assert_close(sums, reference_forward(embeddings.float(), labels, "euclidean", 5.0))


@requires_cuda
@requires_extension
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(300, 32, generator=generator)
    labels = torch.arange(300) // 4
    sums = semi_hard_triplet_loss_forward(embeddings.cuda(), labels.cuda(), "euclidean", 5.0)
    expected = semi_hard_triplet_loss_forward(embeddings, labels, "euclidean", 5.0)
    torch.testing.assert_close(sums.cpu(), expected, rtol=1e-4, atol=1e-4)
