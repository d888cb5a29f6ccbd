"""embedplug::batch_all_triplet_loss_forward: fused kernel vs the pure-torch reference, gradients, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, assert_compiles_like_eager, label_structures, requires_cuda, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug import _extension
from embedplug.ops import batch_all_triplet_loss_forward
from embedplug.reference.batch_all import batch_all_triplet_loss_forward as reference_forward

raw_op = getattr(torch.ops.embedplug, "batch_all_triplet_loss_forward", None) if _extension.STATUS.loaded else None
fused_backward = getattr(torch.ops.embedplug, "_batch_all_triplet_loss_backward", None) if _extension.STATUS.loaded else None


def fused_op(embeddings, labels, distance, margin, compute_grad=True):
    """(loss_sums, counts) from the fused op; compute_grad=True takes the forward-computed gradient
    whenever the incoming gradient is uniform, and recomputes otherwise."""
    sums, counts, _ = raw_op(embeddings, labels, distance, margin, compute_grad)
    return sums, counts


def assert_matches_reference(embeddings, labels, distance, margin, msg=""):
    sums, counts = fused_op(embeddings, labels, distance, margin)
    expected_sums, expected_counts = reference_forward(embeddings, labels, distance, margin)
    assert torch.equal(counts, expected_counts), msg
    torch.testing.assert_close(sums, expected_sums, rtol=1e-5, atol=1e-5, msg=msg)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 150])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference(distance, n, dtype):
    generator = torch.Generator().manual_seed(n)
    embeddings = torch.randn(n, 24, generator=generator, dtype=dtype)
    # Structures include one big class (sort + binary-search path) and P x 4 (direct-compare path).
    for name, labels in label_structures(n, generator).items():
        assert_matches_reference(embeddings, labels, distance, 1.0 if distance == "cosine" else 5.0, msg=name)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("samples_per_class", [3, 17, 40])
@pytest.mark.parametrize("uniform", [False, True], ids=["recomputed", "from_forward"])
def test_backward_matches_reference_autograd(distance, samples_per_class, uniform):
    # 3 and 17 positives sit on both sides of the direct-compare / binary-search switch.
    generator = torch.Generator().manual_seed(samples_per_class)
    n = 120
    labels = (torch.arange(n) // samples_per_class)[torch.randperm(n, generator=generator)]
    embeddings = torch.randn(n, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    # A uniform incoming gradient (what the loss gives) takes the gradient computed in the forward;
    # any other one recomputes the choices in the backward.
    weights = torch.full((n,), 0.3, dtype=torch.float64) if uniform else torch.randn(n, generator=generator, dtype=torch.float64)
    margin = 0.5 if distance == "cosine" else 4.0
    (fused_grad,) = torch.autograd.grad((fused_op(embeddings, labels, distance, margin)[0] * weights).sum(), embeddings)
    (reference_grad,) = torch.autograd.grad(
        (reference_forward(embeddings, labels, distance, margin)[0] * weights).sum(), embeddings
    )
    torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-9, atol=1e-10)


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
    embeddings = torch.randn(labels.numel(), 6, generator=generator, dtype=torch.float64, requires_grad=True)
    sums, counts = fused_op(embeddings, labels, distance, margin)
    expected_sums, expected_counts = reference_forward(embeddings, labels, distance, margin)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(sums, expected_sums, rtol=1e-9, atol=1e-9)
    weights = torch.randn(labels.numel(), generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((sums * weights).sum(), embeddings)
    (expected_grad,) = torch.autograd.grad((expected_sums * weights).sum(), embeddings)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-9)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_gradcheck_float64(distance):
    generator = torch.Generator().manual_seed(3)
    # Spread-out points: finite differences must not move a triplet across the margin.
    embeddings = (torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    margin = 0.7 if distance == "cosine" else 5.0
    assert torch.autograd.gradcheck(
        lambda x: fused_op(x, labels, distance, margin)[0], (embeddings,), eps=1e-6, atol=1e-5
    )


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_opcheck(distance):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 8, generator=generator, requires_grad=True)
    labels = torch.arange(40) // 4
    for compute_grad in (False, True):
        torch.library.opcheck(raw_op.default, (embeddings, labels, distance, 1.0, compute_grad))
    _, _, unit_grad = raw_op(embeddings.detach(), labels, distance, 1.0, True)
    for saved in (unit_grad, unit_grad.new_empty(0)):
        for grad_sums in (torch.randn(40), torch.full((40,), 0.25)):
            torch.library.opcheck(fused_backward.default, (grad_sums, embeddings.detach(), labels, saved, distance, 1.0))


@requires_extension
def test_torch_compile_fullgraph_matches_eager():
    from embedplug.functional import batch_all_triplet_loss

    assert_compiles_like_eager(batch_all_triplet_loss)


@requires_extension
def test_exact_ties_at_the_margin_match_reference():
    # Integer points and an integer margin: many triplets land exactly on t = 0, which ST keeps in
    # the gradient but does not count.
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).double().requires_grad_()
    labels = torch.randint(0, 4, (40,), generator=generator)
    for margin in (0.0, 1.0, 2.0):
        sums, counts = fused_op(embeddings, labels, "squared_euclidean", margin)
        expected_sums, expected_counts = reference_forward(embeddings, labels, "squared_euclidean", margin)
        assert torch.equal(counts, expected_counts)
        assert torch.equal(sums, expected_sums)
        (grad,) = torch.autograd.grad(sums.sum(), embeddings)
        (expected_grad,) = torch.autograd.grad(expected_sums.sum(), embeddings)
        assert torch.equal(grad, expected_grad)


@requires_extension
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_become_nan_with_nan_gradient(bad_value):
    embeddings = torch.randn(10, 4)
    embeddings[3, 1] = bad_value
    embeddings.requires_grad_()
    labels = torch.arange(10) // 2
    sums, _ = fused_op(embeddings, labels, "euclidean", 5.0)
    assert torch.isnan(sums).all()  # every row has the bad column
    (grad,) = torch.autograd.grad(sums.sum(), embeddings)
    assert torch.isnan(grad).all()


@requires_extension
def test_anchors_without_positives_contribute_nothing_even_next_to_bad_rows():
    embeddings = torch.randn(6, 3)
    embeddings[0, 0] = float("nan")
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    sums, counts = fused_op(embeddings, labels, "euclidean", 5.0)
    assert torch.equal(sums, torch.zeros(6)) and torch.equal(counts, torch.zeros(6, dtype=torch.long))


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
    sums, counts = batch_all_triplet_loss_forward(embeddings, labels, "euclidean", 5.0)
    assert sums.dtype == torch.float32
    expected_sums, expected_counts = reference_forward(embeddings.float(), labels, "euclidean", 5.0)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(sums, expected_sums)


@requires_cuda
@requires_extension
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(300, 32, generator=generator)
    labels = torch.arange(300) // 4
    sums, counts = batch_all_triplet_loss_forward(embeddings.cuda(), labels.cuda(), "euclidean", 5.0)
    expected_sums, expected_counts = batch_all_triplet_loss_forward(embeddings, labels, "euclidean", 5.0)
    assert torch.equal(counts.cpu(), expected_counts)
    torch.testing.assert_close(sums.cpu(), expected_sums, rtol=1e-4, atol=1e-4)
