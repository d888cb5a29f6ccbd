"""Every fused op's CUDA kernel against its CPU kernel: values, gradients, gradcheck, opcheck, compile, edges.

The CPU kernel is itself tested against the pure-torch reference (tests/ops), so agreement here ties
the CUDA kernel to the reference too. float64 runs are compared tightly (only the GEMMs' summation
order differs between MKL/OpenBLAS and cuBLAS); float32 with the tolerance such reorderings need.
Selections (indices, active counts) are compared exactly in float64, where no near-tie can flip.

Every test skips without a CUDA device; `scripts/gpu-check.sh` runs them on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _support import KERNEL_DISTANCES, label_structures, requires_cuda, requires_extension

from embedplug import _extension, functional
from embedplug.ops import (
    batch_all_triplet_loss_forward,
    batch_hard_mining,
    masked_infonce,
    masked_infonce_mean,
    semi_hard_triplet_loss_forward,
)

pytestmark = [requires_cuda, requires_extension, pytest.mark.cuda]

TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}

# Batch sizes around the CUDA kernels' block boundaries (256-thread epilogues, strips of 128 rows)
# and N = 1.
SIZES = (1, 2, 127, 257, 600)


def _has_cuda_kernel(op_name: str) -> bool:
    return _extension.has_kernel(op_name, "cuda")


def _float_outputs(outputs):
    return [t for t in outputs if t.is_floating_point() and t.requires_grad]


def _run(fn, tensors, cotangent_seed=0):
    """fn's outputs and the gradient of a fixed random projection of its differentiable outputs."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in tensors]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    differentiable = _float_outputs(outputs)
    gradients = []
    if differentiable:
        generator = torch.Generator().manual_seed(cotangent_seed)
        projection = sum(
            (out * torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)).sum()
            for out in differentiable
        )
        inputs = [t for t in leaves if t is not None and t.requires_grad]
        gradients = torch.autograd.grad(projection, inputs, allow_unused=True)
    return [t.detach() for t in outputs], list(gradients)


def assert_cuda_matches_cpu(fn, tensors, dtype, exact_integer_outputs=True):
    cpu_outputs, cpu_grads = _run(fn, tensors)
    cuda_outputs, cuda_grads = _run(fn, [t.cuda() if t is not None else None for t in tensors])
    tolerance = TOLERANCES[dtype]
    for cpu_out, cuda_out in zip(cpu_outputs, cuda_outputs):
        assert cuda_out.device.type == "cuda"
        if cpu_out.is_floating_point():
            torch.testing.assert_close(cuda_out.cpu(), cpu_out, equal_nan=True, **tolerance)
        elif exact_integer_outputs:
            assert torch.equal(cuda_out.cpu(), cpu_out)
    for cpu_grad, cuda_grad in zip(cpu_grads, cuda_grads):
        if cpu_grad is None:
            assert cuda_grad is None
            continue
        torch.testing.assert_close(cuda_grad.cpu(), cpu_grad, equal_nan=True, **tolerance)


def _labelled_inputs(n, dim, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator, dtype=dtype)
    return embeddings, label_structures(n, generator)


LABELLED_OPS = {
    "batch_hard_mining": lambda distance, margin: (lambda x, y: batch_hard_mining(x, y, distance)),
    "batch_all_triplet_loss_forward": lambda distance, margin: (
        lambda x, y: batch_all_triplet_loss_forward(x, y, distance, margin)
    ),
    "semi_hard_triplet_loss_forward": lambda distance, margin: (
        lambda x, y: semi_hard_triplet_loss_forward(x, y, distance, margin)
    ),
}


@pytest.mark.parametrize("op_name", sorted(LABELLED_OPS))
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_labelled_ops_match_cpu(op_name, distance, n, dtype):
    if not _has_cuda_kernel(op_name):
        pytest.fail(f"embedplug::{op_name} has no CUDA kernel")
    embeddings, structures = _labelled_inputs(n, 24, dtype, seed=n)
    fn = LABELLED_OPS[op_name](distance, 1.0 if distance == "cosine" else 5.0)
    for name, labels in structures.items():
        try:
            assert_cuda_matches_cpu(fn, [embeddings, labels], dtype, exact_integer_outputs=dtype == torch.float64)
        except AssertionError as error:
            raise AssertionError(f"labels {name}: {error}") from error


@pytest.mark.parametrize("op_name", sorted(LABELLED_OPS))
def test_labelled_ops_non_contiguous_and_nan_rows(op_name):
    generator = torch.Generator().manual_seed(11)
    wide = torch.randn(300, 48, generator=generator, dtype=torch.float64)
    embeddings = wide[:, ::2]  # non-contiguous [300, 24]
    labels = torch.arange(300) // 4
    fn = LABELLED_OPS[op_name]("euclidean", 5.0)
    assert_cuda_matches_cpu(fn, [embeddings, labels], torch.float64)
    with_nan = embeddings.clone()
    with_nan[[3, 150]] = float("nan")
    assert_cuda_matches_cpu(fn, [with_nan, labels], torch.float64, exact_integer_outputs=False)


def _infonce_inputs(n, columns, dim, dtype, seed, guide_dim=6):
    generator = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=1)
    candidates = F.normalize(torch.randn(n * columns, dim, generator=generator, dtype=dtype), dim=1)
    guide_anchors = F.normalize(torch.randn(n, guide_dim, generator=generator, dtype=dtype), dim=1)
    guide_candidates = torch.randn(n * columns, guide_dim, generator=generator, dtype=dtype)
    guide_candidates[:n] += 2 * guide_anchors
    return anchors, candidates, guide_anchors, F.normalize(guide_candidates, dim=1)


# (margin_strategy, margin, anchor_anchor, positive_anchor, positive-candidate block, exclude_self, guided)
INFONCE_OPTIONS = {
    "mnrl": ("none", 0.0, False, False, "none", True, False),
    "mnrl_all_directions": ("none", 0.0, True, True, "all", True, False),
    "gist_default": ("absolute", 0.0, True, False, "positives", False, True),
    "gist_relative": ("relative", 0.3, False, False, "positives", False, True),
    "gist_negative_margin": ("absolute", -0.05, True, True, "all", True, True),
    "self_guided": ("absolute", 0.05, True, False, "positives", False, False),
}


def _infonce_options(option_set, n, m):
    strategy, margin, anchor_anchor, positive_anchor, block, exclude_self, guided = INFONCE_OPTIONS[option_set]
    options = dict(
        scale=20.0,
        margin_strategy=strategy,
        margin=margin,
        anchor_anchor=anchor_anchor,
        positive_anchor=positive_anchor,
        positive_candidate_columns={"none": 0, "positives": n, "all": m}[block],
        exclude_self=exclude_self,
    )
    return options, guided


@pytest.mark.parametrize("mean", [False, True], ids=["masked_infonce", "masked_infonce_mean"])
@pytest.mark.parametrize("option_set", sorted(INFONCE_OPTIONS))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_infonce_ops_match_cpu(mean, option_set, n, dtype):
    op_name = "masked_infonce_mean" if mean else "masked_infonce"
    if not _has_cuda_kernel(op_name):
        pytest.fail(f"embedplug::{op_name} has no CUDA kernel")
    anchors, candidates, guide_anchors, guide_candidates = _infonce_inputs(n, 2, 32, dtype, seed=n)
    options, guided = _infonce_options(option_set, n, candidates.shape[0])
    op = masked_infonce_mean if mean else masked_infonce

    def fn(a, c, ga, gc):
        return op(a, c, ga, gc, **options)

    guides = [guide_anchors, guide_candidates] if guided else [None, None]
    assert_cuda_matches_cpu(fn, [anchors, candidates, *guides], dtype)


def test_infonce_non_contiguous_and_nan_rows():
    anchors, candidates, guide_anchors, guide_candidates = _infonce_inputs(300, 3, 32, torch.float64, seed=4)
    options, _ = _infonce_options("gist_default", 300, candidates.shape[0])
    for op in (masked_infonce, masked_infonce_mean):
        def fn(a, c, ga, gc, op=op):
            return op(a, c, ga, gc, **options)

        assert_cuda_matches_cpu(fn, [anchors.t().contiguous().t(), candidates[::1], guide_anchors, guide_candidates], torch.float64)
        poisoned = candidates.clone()
        poisoned[7] = float("nan")
        assert_cuda_matches_cpu(fn, [anchors, poisoned, guide_anchors, guide_candidates], torch.float64)


# MultipleNegativesRankingLoss's options of masked_infonce_mean (csrc/masked_infonce_mnrl_rules.h):
# per-direction partitions and hardness weighting, over MNRL's block sets (query-to-doc, + doc-to-query,
# all four directions), with hard-negative columns (M = 3N) so every hardness mode selects something.
MNRL_BLOCK_SETS = {
    "q2d": dict(anchor_anchor=False, positive_anchor=False, doc_to_doc=False),
    "q2d+d2q": dict(anchor_anchor=False, positive_anchor=True, doc_to_doc=False),
    "all": dict(anchor_anchor=True, positive_anchor=True, doc_to_doc=True),
}
MNRL_HARDNESS_MODES = ("none", "in_batch_negatives", "hard_negatives", "all_negatives")


def _mnrl_option_grid():
    for block_set in MNRL_BLOCK_SETS:
        for partition in ("joint", "per_direction"):
            for hardness in MNRL_HARDNESS_MODES:
                for strength in (0.0, 5.0):
                    if hardness == "none" and strength:
                        continue
                    yield pytest.param(
                        block_set, partition, hardness, strength, id=f"{block_set}-{partition}-{hardness}-{strength:g}"
                    )


def _mnrl_mean(block_set, partition, hardness, strength, guided=False):
    blocks = MNRL_BLOCK_SETS[block_set]

    def fn(a, c, ga, gc):
        return masked_infonce_mean(
            a,
            c,
            ga,
            gc,
            scale=20.0,
            margin_strategy="absolute" if guided else "none",
            margin=0.0,
            anchor_anchor=blocks["anchor_anchor"],
            positive_anchor=blocks["positive_anchor"],
            positive_candidate_columns=c.shape[0] if blocks["doc_to_doc"] else 0,
            exclude_self=True,
            partition_mode=partition,
            hardness_mode=hardness,
            hardness_strength=strength,
        )

    return fn


@pytest.mark.parametrize("block_set, partition, hardness, strength", list(_mnrl_option_grid()))
@pytest.mark.parametrize("n", (1, 127, 257))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_infonce_mean_mnrl_options_match_cpu(block_set, partition, hardness, strength, n, dtype):
    if not _has_cuda_kernel("masked_infonce_mean"):
        pytest.fail("embedplug::masked_infonce_mean has no CUDA kernel")
    anchors, candidates, _, _ = _infonce_inputs(n, 3, 32, dtype, seed=n)
    fn = _mnrl_mean(block_set, partition, hardness, strength)
    assert_cuda_matches_cpu(fn, [anchors, candidates, None, None], dtype)


@pytest.mark.parametrize("partition", ["joint", "per_direction"])
@pytest.mark.parametrize("hardness", MNRL_HARDNESS_MODES[1:])
def test_infonce_mean_mnrl_options_with_guide_and_nan_rows(partition, hardness):
    # Guide filtering drops entries before the hardness term (a dropped entry stays dropped); a NaN
    # candidate row poisons its groups on both backends alike.
    anchors, candidates, guide_anchors, guide_candidates = _infonce_inputs(300, 3, 32, torch.float64, seed=5)
    fn = _mnrl_mean("all", partition, hardness, 5.0, guided=True)
    assert_cuda_matches_cpu(fn, [anchors, candidates, guide_anchors, guide_candidates], torch.float64)
    poisoned = candidates.clone()
    poisoned[401] = float("nan")
    fn = _mnrl_mean("q2d+d2q", partition, hardness, 5.0)
    assert_cuda_matches_cpu(fn, [anchors, poisoned, None, None], torch.float64)


def test_gradcheck_on_cuda():
    generator = torch.Generator().manual_seed(3)
    embeddings = (torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3).cuda().requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4]).cuda()
    for distance in KERNEL_DISTANCES:
        torch.autograd.gradcheck(lambda x: batch_hard_mining(x, labels, distance)[0], (embeddings,))
        torch.autograd.gradcheck(lambda x: batch_all_triplet_loss_forward(x, labels, distance, 5.0)[0], (embeddings,))
        torch.autograd.gradcheck(lambda x: semi_hard_triplet_loss_forward(x, labels, distance, 5.0), (embeddings,))
    anchors, candidates, guide_anchors, guide_candidates = (t.cuda() for t in _infonce_inputs(6, 2, 4, torch.float64, 1))
    options, _ = _infonce_options("gist_default", 6, 12)
    leaves = (anchors.requires_grad_(), candidates.requires_grad_())
    torch.autograd.gradcheck(lambda a, c: masked_infonce(a, c, guide_anchors, guide_candidates, **options)[0], leaves)
    torch.autograd.gradcheck(lambda a, c: masked_infonce_mean(a, c, guide_anchors, guide_candidates, **options), leaves)
    # Per-direction partitions (the hardness term is detached, so finite differences cannot check it:
    # the option-grid parity test above covers it against the CPU kernel).
    mnrl_mean = _mnrl_mean("all", "per_direction", "none", 0.0)
    torch.autograd.gradcheck(lambda a, c: mnrl_mean(a, c, None, None), leaves)


def test_opcheck_on_cuda():
    from torch.library import opcheck

    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(40, 8, generator=generator).cuda().requires_grad_()
    labels = (torch.arange(40) // 4).cuda()
    opcheck(torch.ops.embedplug.batch_hard_mining.default, (embeddings, labels, "euclidean"))
    opcheck(torch.ops.embedplug.batch_all_triplet_loss_forward.default, (embeddings, labels, "euclidean", 5.0, True))
    opcheck(torch.ops.embedplug.semi_hard_triplet_loss_forward.default, (embeddings, labels, "cosine", 1.0, True))
    anchors, candidates, guide_anchors, guide_candidates = (t.cuda() for t in _infonce_inputs(16, 2, 8, torch.float32, 2))
    anchors.requires_grad_()
    candidates.requires_grad_()
    arguments = (anchors, candidates, guide_anchors, guide_candidates, 20.0, "absolute", 0.0, True, False, 16, False)
    opcheck(torch.ops.embedplug.masked_infonce.default, arguments)
    mnrl_arguments = (anchors, candidates, None, None, 20.0, "none", 0.0, True, True, 32, True, True)
    for mnrl_options in (("per_direction", "none", 0.0), ("joint", "all_negatives", 5.0), ("per_direction", "hard_negatives", 2.0)):
        opcheck(torch.ops.embedplug.masked_infonce_mean.default, (*mnrl_arguments, *mnrl_options))


def test_compile_fullgraph_on_cuda():
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(64, 16, generator=generator).cuda().requires_grad_()
    labels = (torch.arange(64) // 4).cuda()
    for loss_fn in (
        functional.batch_hard_triplet_loss,
        functional.batch_all_triplet_loss,
        functional.batch_semi_hard_triplet_loss,
    ):
        torch._dynamo.reset()
        compiled = torch.compile(loss_fn, fullgraph=True)
        eager = loss_fn(embeddings, labels)
        (eager_grad,) = torch.autograd.grad(eager, embeddings)
        result = compiled(embeddings, labels)
        (compiled_grad,) = torch.autograd.grad(result, embeddings)
        torch.testing.assert_close(result, eager)
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_mixed_devices_are_a_clear_error():
    embeddings = torch.randn(8, 4).cuda()
    labels = torch.arange(8) // 2
    with pytest.raises((RuntimeError, ValueError), match="cpu|device"):
        batch_hard_mining(embeddings, labels, "euclidean")
    anchors, candidates, guide_anchors, guide_candidates = _infonce_inputs(8, 2, 4, torch.float32, 0)
    with pytest.raises((RuntimeError, ValueError), match="cpu|device"):
        masked_infonce_mean(anchors.cuda(), candidates.cuda(), guide_anchors, guide_candidates, scale=20.0, margin_strategy="absolute")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    embeddings, structures = _labelled_inputs(257, 16, torch.float64, seed=2)
    labels = structures["pk4"]
    expected = batch_hard_mining(embeddings, labels, "euclidean")
    result = batch_hard_mining(embeddings.to("cuda:1"), labels.to("cuda:1"), "euclidean")
    assert result[0].device == torch.device("cuda:1")
    torch.testing.assert_close(result[0].cpu(), expected[0])
    anchors, candidates, _, _ = _infonce_inputs(257, 2, 16, torch.float64, 3)
    loss = masked_infonce_mean(anchors.to("cuda:1"), candidates.to("cuda:1"), scale=20.0)
    torch.testing.assert_close(loss.cpu(), masked_infonce_mean(anchors, candidates, scale=20.0))


def test_large_batch_memory_is_bounded():
    """GIST-shaped call at N = 16,384: the kernel must not hold an N x M matrix (2 GiB in float32)."""
    n, dim = 16_384, 64
    anchors, candidates, guide_anchors, guide_candidates = (
        t.cuda() for t in _infonce_inputs(n, 1, dim, torch.float32, 0, guide_dim=dim)
    )
    anchors.requires_grad_()
    candidates.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    loss = masked_infonce_mean(
        anchors, candidates, guide_anchors, guide_candidates, scale=20.0, margin_strategy="absolute",
        anchor_anchor=True, positive_candidate_columns=n, exclude_self=False,
    )
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    assert extra < 1 << 30, f"{extra / 2**20:.0f} MiB extra CUDA memory"
