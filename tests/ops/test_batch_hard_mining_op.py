"""embedplug::batch_hard_mining: fused kernel vs the pure-torch reference, gradients, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, assert_compiles_like_eager, label_structures, requires_cuda, requires_extension

from embedplug.ops import batch_hard_mining
from embedplug.reference.batch_hard import batch_hard_mining as reference_mining

fused_op = torch.ops.embedplug.batch_hard_mining if hasattr(torch.ops.embedplug, "batch_hard_mining") else None


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 7, 255, 256, 257, 600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference(distance, n, dtype):
    generator = torch.Generator().manual_seed(n)
    embeddings = torch.randn(n, 24, generator=generator, dtype=dtype)
    for name, labels in label_structures(n, generator).items():
        distances, indices = fused_op(embeddings, labels, distance)
        expected_distances, expected_indices = reference_mining(embeddings, labels, distance)
        assert torch.equal(indices, expected_indices), name
        torch.testing.assert_close(distances, expected_distances, rtol=1e-5, atol=1e-6, msg=name)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_backward_matches_reference_autograd(distance):
    generator = torch.Generator().manual_seed(1)
    n = 300
    for name, labels in label_structures(n, generator).items():
        embeddings = torch.randn(n, 16, generator=generator, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        (fused_grad,) = torch.autograd.grad((fused_op(embeddings, labels, distance)[0] * weights).sum(), embeddings)
        (reference_grad,) = torch.autograd.grad(
            (reference_mining(embeddings, labels, distance)[0] * weights).sum(), embeddings
        )
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-9, atol=1e-10, msg=name)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_gradcheck_float64(distance):
    generator = torch.Generator().manual_seed(3)
    # Spread-out points: finite differences must not flip which pair is hardest.
    embeddings = (torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    assert torch.autograd.gradcheck(lambda x: fused_op(x, labels, distance)[0], (embeddings,), eps=1e-6, atol=1e-5)


@requires_extension
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_opcheck(distance):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 8, generator=generator, requires_grad=True)
    labels = torch.arange(40) // 4
    torch.library.opcheck(fused_op.default, (embeddings, labels, distance))
    distances, indices = fused_op(embeddings.detach(), labels, distance)
    torch.library.opcheck(
        torch.ops.embedplug._batch_hard_mining_backward.default,
        (torch.randn(40, 3), embeddings.detach(), distances, indices, distance),
    )


@requires_extension
def test_torch_compile_fullgraph_matches_eager():
    from embedplug.functional import batch_hard_triplet_loss

    assert_compiles_like_eager(batch_hard_triplet_loss)


@requires_extension
def test_non_contiguous_input_gives_same_result():
    generator = torch.Generator().manual_seed(6)
    wide = torch.randn(50, 32, generator=generator)
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    labels = torch.arange(50) // 5
    distances, indices = fused_op(strided, labels, "euclidean")
    expected_distances, expected_indices = fused_op(strided.contiguous(), labels, "euclidean")
    assert torch.equal(indices, expected_indices)
    assert torch.equal(distances, expected_distances)


@requires_extension
def test_ties_pick_the_first_index_like_torch_max():
    # Integer points: every distance is exact, so ties are real ties.
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    distances, indices = fused_op(embeddings, labels, "squared_euclidean")
    expected_distances, expected_indices = reference_mining(embeddings, labels, "squared_euclidean")
    assert torch.equal(indices, expected_indices)
    assert torch.equal(distances, expected_distances)
    assert indices[0, 0].item() == 1  # anchor 0: positives 1 and 2 both at distance 1 -> first


@requires_extension
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_become_nan_with_nan_gradient(bad_value):
    embeddings = torch.randn(10, 4)
    embeddings[3, 1] = bad_value
    embeddings.requires_grad_()
    labels = torch.arange(10) // 2
    distances, _ = fused_op(embeddings, labels, "euclidean")
    assert torch.isnan(distances).all()
    (grad,) = torch.autograd.grad(distances.sum(), embeddings)
    assert torch.isnan(grad).any()


@requires_extension
def test_cpp_checks_raise_python_errors_not_crashes():
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="2-D"):
        fused_op(torch.randn(4), labels, "euclidean")
    with pytest.raises(TypeError, match="float32 or float64"):
        fused_op(torch.randn(4, 3).half(), labels, "euclidean")
    with pytest.raises(RuntimeError, match="one label per embedding"):
        fused_op(torch.randn(5, 3), labels, "euclidean")
    with pytest.raises(TypeError, match="int64"):
        fused_op(torch.randn(4, 3), labels.int(), "euclidean")
    with pytest.raises(RuntimeError, match="unknown distance"):
        fused_op(torch.randn(4, 3), labels, "manhattan")
    with pytest.raises(RuntimeError, match="empty batch"):
        fused_op(torch.randn(0, 3), labels[:0], "euclidean")


def test_dispatch_upcasts_half_precision():
    embeddings = torch.randn(20, 8).half()
    labels = torch.arange(20) // 4
    distances, indices = batch_hard_mining(embeddings, labels, "euclidean")
    assert distances.dtype == torch.float32
    expected, expected_indices = reference_mining(embeddings.float(), labels, "euclidean")
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected)


@requires_cuda
@requires_extension
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(300, 32, generator=generator)
    labels = torch.arange(300) // 4
    distances, indices = batch_hard_mining(embeddings.cuda(), labels.cuda(), "euclidean")
    expected, expected_indices = batch_hard_mining(embeddings, labels, "euclidean")
    assert torch.equal(indices.cpu(), expected_indices)
    torch.testing.assert_close(distances.cpu(), expected, rtol=1e-4, atol=1e-5)
