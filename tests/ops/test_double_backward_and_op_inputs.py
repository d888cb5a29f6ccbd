"""Second derivatives through the fused ops (true value or a clear error, never a silent 0), and the
raw ops' and wrappers' input checks: one device for every tensor, float32/float64 named per op."""

from __future__ import annotations

import sys

import pytest
import torch
from _support import requires_extension

import embedplug.functional as F
import embedplug.ops.batch_all as batch_all_op
import embedplug.ops.batch_hard as batch_hard_op
import embedplug.ops.semi_hard as semi_hard_op
from embedplug.ops import layer
from embedplug.ops import batch_all_triplet_loss_forward, batch_hard_mining, masked_infonce, semi_hard_triplet_loss_forward

# The package re-exports a function named like this module, so take the module itself.
masked_infonce_op = sys.modules["embedplug.ops.masked_infonce"]

OP_MODULES = (batch_all_op, batch_hard_op, semi_hard_op)


@pytest.fixture
def force_reference(monkeypatch):
    """Makes every op in this process run its pure-torch reference (as EMBEDPLUG_DISABLE_EXT=1 does)."""

    def force():
        monkeypatch.setattr(layer, "_force_reference", True)

    return force


def hessian_vector(loss_of, x, direction):
    """d/dx <d loss/dx, direction>: the second derivative along ``direction``."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_of(x), x, create_graph=True)
    (second,) = torch.autograd.grad((grad * direction).sum(), x)
    return grad.detach(), second


def _inputs(distance_seed=0, n=12, dim=5):
    generator = torch.Generator().manual_seed(distance_seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    labels = torch.arange(n) // 3
    direction = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return x, labels, direction


@requires_extension
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize(
    "loss", [F.batch_hard_triplet_loss, F.batch_hard_soft_margin_triplet_loss], ids=["batch_hard", "soft_margin"]
)
def test_batch_hard_second_derivative_is_the_references(loss, distance, force_reference):
    x, labels, direction = _inputs()

    def loss_of(e):
        return loss(e, labels, distance=distance)

    fused_grad, fused_second = hessian_vector(loss_of, x, direction)
    force_reference()
    reference_grad, reference_second = hessian_vector(loss_of, x, direction)
    torch.testing.assert_close(fused_grad, reference_grad)
    torch.testing.assert_close(fused_second, reference_second)
    assert reference_second.abs().sum() > 0  # a real check, not 0 == 0


@requires_extension
def test_batch_hard_gradcheck_of_the_differentiable_backward():
    x, labels, _ = _inputs(n=6, dim=3)
    x.requires_grad_()
    torch.autograd.gradgradcheck(lambda e: F.batch_hard_soft_margin_triplet_loss(e, labels), (x,))


@requires_extension
@pytest.mark.parametrize(
    "loss, op",
    [
        (lambda x, y: F.batch_semi_hard_triplet_loss(x, y), "semi_hard_triplet_loss_forward"),
        (lambda x, y: F.batch_all_triplet_loss(x, y), "batch_all_triplet_loss_forward"),
        (lambda x, y: masked_infonce(x[:6], x[6:], scale=20.0)[0].sum(), "masked_infonce"),
        (lambda x, y: F.gist_embed_loss(x[:6], x[6:]), "masked_infonce_mean"),
    ],
    ids=["semi_hard", "batch_all", "masked_infonce", "masked_infonce_mean"],
)
def test_fused_backward_refuses_to_build_a_graph_with_the_op_named(loss, op):
    x, labels, _ = _inputs()
    x.requires_grad_()
    with pytest.raises(RuntimeError, match=f"embedplug::{op} does not support double backward"):
        torch.autograd.grad(loss(x, labels), x, create_graph=True)
    # The plain first derivative still works.
    x.grad = None
    loss(x, labels).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# -- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: batch_hard_mining(x, y.to("meta")),
        lambda x, y: semi_hard_triplet_loss_forward(x, y.to("meta")),
        lambda x, y: batch_all_triplet_loss_forward(x, y.to("meta")),
        lambda x, y: masked_infonce(x[:6], x[6:], x[:6].to("meta"), x[6:], scale=20.0, margin_strategy="absolute"),
        lambda x, y: masked_infonce(x[:6], x[6:].to("meta"), scale=20.0),
        lambda x, y: F.gist_embed_loss(x[:6], x[6:], guide_anchor=x[:6].to("meta"), guide_positive=x[6:].to("meta")),
        lambda x, y: F.batch_hard_triplet_loss(x, y.to("meta")),
    ],
    ids=["batch_hard", "semi_hard", "batch_all", "guide_anchors", "candidates", "gist_guide", "functional_labels"],
)
def test_inputs_on_two_devices_are_refused_naming_both(call):
    x, labels, _ = _inputs()
    with pytest.raises(ValueError, match=r"(?s)(meta.*cpu|cpu.*meta)"):
        call(x.float(), labels)


# -- dtypes of the raw ops -----------------------------------------------------------------------


def _raw_calls(dtype):
    x = torch.randn(6, 3).to(dtype)
    labels = torch.arange(6) // 2
    floats = torch.ones(6, 3)
    indices = torch.zeros(6, 3, dtype=torch.long)
    ops = torch.ops.embedplug
    return {
        "batch_hard_mining": lambda: ops.batch_hard_mining(x, labels, "euclidean"),
        "_batch_hard_mining_backward": lambda: ops._batch_hard_mining_backward(floats, x, floats, indices, "euclidean"),
        "batch_all_triplet_loss_forward": lambda: ops.batch_all_triplet_loss_forward(x, labels, "euclidean", 1.0, False),
        "_batch_all_triplet_loss_backward": lambda: ops._batch_all_triplet_loss_backward(
            torch.ones(6), x, labels, torch.empty(0), "euclidean", 1.0
        ),
        "semi_hard_triplet_loss_forward": lambda: ops.semi_hard_triplet_loss_forward(x, labels, "euclidean", 1.0, False),
        "_semi_hard_triplet_loss_backward": lambda: ops._semi_hard_triplet_loss_backward(
            torch.ones(6), x, labels, torch.empty(0), "euclidean", 1.0
        ),
        "masked_infonce": lambda: ops.masked_infonce(x, x, None, None, 20.0, "none", 0.0, False, False, 0, True),
        "_masked_infonce_backward": lambda: ops._masked_infonce_backward(
            torch.ones(6), x, x, None, None, torch.ones(6), 20.0, "none", 0.0, False, False, 0, True
        ),
        "masked_infonce_mean": lambda: ops.masked_infonce_mean(x, x, None, None, 20.0, "none", 0.0, False, False, 0, True, False),
    }


@requires_extension
@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
@pytest.mark.parametrize("op", list(_raw_calls(torch.float32)))
def test_raw_op_with_wrong_dtype_names_the_op_and_the_dtypes_it_takes(op, dtype):
    with pytest.raises(TypeError, match=rf"embedplug::{op}: .* must be float32 or float64, got"):
        _raw_calls(dtype)[op]()


@requires_extension
def test_raw_op_with_float_labels_names_the_op():
    with pytest.raises(TypeError, match=r"embedplug::batch_hard_mining: labels must be int64"):
        torch.ops.embedplug.batch_hard_mining(torch.randn(4, 2), torch.zeros(4), "euclidean")
