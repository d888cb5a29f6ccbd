"""embedplug::pair_rule_forward beyond the conformance table's small batches: the tiled path (more than
2^22 pairs, so more than 2,048 rows), both gradient paths (the forward's unit gradient and the
backward's recomputation for any incoming gradient, per stream), label structures drawn at random,
exact ties, opcheck of both ops, non-finite rows, the C++ checks of a raw call, and CUDA against CPU.

The oracle is the pure-torch interpreter (embedplug.reference.pair_rule) on the decoded rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _support import (
    assert_compiles_like_eager,
    example_lifted_structure,
    label_structures,
    requires_cuda,
    requires_extension,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug import functional as F
from embedplug.pair_rules import MiningFilter, PairRule, encode, presets
from embedplug.reference import pair_rule as reference


def mined_contrastive() -> PairRule:
    rule = presets.contrastive(0.1, 0.9)
    mined = MiningFilter(0.05)
    return dataclasses.replace(
        rule,
        positives=dataclasses.replace(rule.positives, filter=mined),
        negatives=dataclasses.replace(rule.negatives, filter=mined),
    )


RULES = {
    "supcon": presets.supcon(0.1),
    "supcon T=1": presets.supcon(1.0),
    "multi-similarity": presets.multi_similarity(mining_epsilon=None),
    "multi-similarity mined": presets.multi_similarity(),
    "multi-similarity eps=0": presets.multi_similarity(3.0, 10.0, 0.2, 0.0),
    "circle": presets.circle(),
    "circle m=0.25": presets.circle(0.25, 16.0),
    "contrastive": presets.contrastive(0.05, 0.9),
    "contrastive mined": mined_contrastive(),
    "ntxent": presets.ntxent(0.2),
    "generalized lifted": presets.generalized_lifted_structure(1.2, 0.1),
    "tuplet margin": presets.tuplet_margin(5.73, 16.0),
    "lifted": example_lifted_structure()(0.8, 0.1),
}
each_rule = pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))


def fused(rule, embeddings, labels, compute_grad=True):
    encoded = encode(rule)
    outputs = torch.ops.embedplug.pair_rule_forward(embeddings, labels, list(encoded.params), list(encoded.codes),
                                                    compute_grad)
    return tuple(outputs[:5])


def oracle(rule, embeddings, labels):
    return tuple(reference.pair_rule_forward(embeddings, labels, rule))


def sums_and_grad(forward, rule, embeddings, labels, weights):
    """(outputs, d sum(weights * loss_sums) / d embeddings)."""
    x = embeddings.detach().clone().requires_grad_()
    outputs = forward(rule, x, labels)
    (grad,) = torch.autograd.grad((outputs[0] * weights).sum(), x)
    return tuple(o.detach() for o in outputs), grad


def assert_same(actual, expected, **tolerance):
    (outputs, grad), (expected_outputs, expected_grad) = actual, expected
    torch.testing.assert_close(outputs[0], expected_outputs[0], **tolerance)
    for index in range(1, 5):
        assert torch.equal(outputs[index], expected_outputs[index]), f"output {index}"
    torch.testing.assert_close(grad, expected_grad, **tolerance)


@requires_extension
@each_rule
# 2,100 rows: more than 2^22 pairs, so the kernel computes 256-row Gram tiles (diagonal,
# off-diagonal and a ragged last one) and positive blocks itself; 300 rows read one product.
@pytest.mark.parametrize("n, samples_per_class", [(300, 4), (300, 300), (2100, 8), (2100, 70)])
@pytest.mark.parametrize("uniform", [False, True], ids=["recomputed", "from_forward"])
def test_fused_matches_reference(rule, n, samples_per_class, uniform):
    generator = torch.Generator().manual_seed(samples_per_class)
    labels = (torch.arange(n) // samples_per_class)[torch.randperm(n, generator=generator)]
    embeddings = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    streams = 2 if rule.reducer.over == "pairs_of_each_side" else 1
    # The reducer's gradient is one number per stream (the forward's unit gradient is reused); any
    # other incoming gradient recomputes the passes in the backward.
    weights = (torch.rand(streams, 1, generator=generator, dtype=torch.float64).expand(streams, n) if uniform
               else torch.randn(streams, n, generator=generator, dtype=torch.float64))
    assert_same(sums_and_grad(fused, rule, embeddings, labels, weights),
                sums_and_grad(oracle, rule, embeddings, labels, weights), rtol=1e-8, atol=1e-10)


@requires_extension
@each_rule
def test_float32_matches_float64_reference_on_tiles(rule):
    generator = torch.Generator().manual_seed(5)
    labels = (torch.arange(2100) // 4)[torch.randperm(2100, generator=generator)]
    embeddings = torch.randn(2100, 32, generator=generator, dtype=torch.float64)
    outputs = fused(rule, embeddings.float(), labels, compute_grad=False)
    expected = oracle(rule, embeddings, labels)
    torch.testing.assert_close(outputs[0].double(), expected[0], rtol=2e-4, atol=2e-4)


@requires_extension
@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    name=st.sampled_from([name for name, rule in RULES.items() if rule.positives.measure == "cosine"]),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_fused_equals_reference(labels, name, duplicates, seed):
    rule = RULES[name]
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    n = labels.numel()
    embeddings = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    if duplicates and name not in ("multi-similarity eps=0", "tuplet margin"):
        # Exact copies: equal similarities, ties inside each log-sum-exp. With epsilon = 0 a positive
        # and a negative copied from one point tie at the miner's strict threshold (the GEMM's last
        # bit decides, in PML too); acos has an infinite slope at a cosine of 1.
        embeddings = embeddings[torch.randint(0, max(n // 2, 1), (n,), generator=generator)]
    streams = 2 if rule.reducer.over == "pairs_of_each_side" else 1
    weights = torch.randn(streams, n, generator=generator, dtype=torch.float64)
    assert_same(sums_and_grad(fused, rule, embeddings, labels, weights),
                sums_and_grad(oracle, rule, embeddings, labels, weights), rtol=1e-8, atol=1e-10)


@requires_extension
@pytest.mark.parametrize("name", ["supcon", "multi-similarity mined", "circle", "ntxent"])
def test_exact_ties_on_axis_vectors(name):
    # Axis-aligned and opposite unit vectors: every cosine is exactly -1, 0 or 1, so the miner's
    # hardest pairs and each log-sum-exp's maximum tie with other columns exactly.
    rule = RULES[name]
    generator = torch.Generator().manual_seed(6)
    basis = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    embeddings = basis[torch.randint(0, 6, (40,), generator=generator)] * torch.randint(1, 4, (40, 1), generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    weights = torch.randn(1, 40, generator=generator, dtype=torch.float64)
    assert_same(sums_and_grad(fused, rule, embeddings, labels, weights),
                sums_and_grad(oracle, rule, embeddings, labels, weights), rtol=1e-9, atol=1e-11)


@requires_extension
@each_rule
def test_label_structures(rule):
    generator = torch.Generator().manual_seed(9)
    embeddings = torch.randn(64, 24, generator=generator, dtype=torch.float64)
    for name, labels in label_structures(64, generator).items():
        expected = oracle(rule, embeddings, labels)
        outputs = fused(rule, embeddings, labels, compute_grad=False)
        torch.testing.assert_close(outputs[0], expected[0], rtol=1e-9, atol=1e-10, msg=name)
        for index in range(1, 5):
            assert torch.equal(outputs[index], expected[index]), f"{name}: output {index}"


@requires_extension
@pytest.mark.parametrize("name", ["supcon", "contrastive", "lifted"])
def test_opcheck(name):
    rule = RULES[name]
    encoded = encode(rule)
    params, codes = list(encoded.params), list(encoded.codes)
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 8, generator=generator, requires_grad=True)
    labels = torch.arange(40) // 4
    for compute_grad in (False, True):
        torch.library.opcheck(torch.ops.embedplug.pair_rule_forward.default, (embeddings, labels, params, codes, compute_grad))
    unit_grad = torch.ops.embedplug.pair_rule_forward(embeddings.detach(), labels, params, codes, True)[5]
    streams = unit_grad.shape[0]
    for saved in (unit_grad, unit_grad.new_empty(0)):
        for grad in (torch.randn(streams, 40), torch.full((streams, 40), 0.25)):
            torch.library.opcheck(torch.ops.embedplug._pair_rule_backward.default,
                                  (grad, embeddings.detach(), labels, saved, params, codes))


@requires_extension
@pytest.mark.parametrize(
    "loss_fn", [F.supervised_contrastive_loss, F.multi_similarity_loss, F.circle_loss], ids=lambda f: f.__name__
)
def test_torch_compile_fullgraph_matches_eager(loss_fn):
    assert_compiles_like_eager(loss_fn)


@requires_extension
@pytest.mark.parametrize("name", ["supcon", "multi-similarity mined", "contrastive", "ntxent"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_rows_poison_every_anchor(name, bad_value):
    rule = RULES[name]
    embeddings = torch.randn(10, 4)
    embeddings[3, 1] = bad_value
    labels = torch.arange(10) // 2
    outputs = fused(rule, embeddings, labels, compute_grad=False)
    # Every row meets the bad one, so every anchor's sum is NaN, as in the reference.
    assert torch.isnan(outputs[0]).all()
    assert torch.isnan(oracle(rule, embeddings, labels)[0]).all()


@requires_extension
def test_cpp_checks_raise_python_errors_not_crashes():
    encoded = encode(presets.supcon())
    params, codes = list(encoded.params), list(encoded.codes)
    labels = torch.zeros(4, dtype=torch.long)
    op = torch.ops.embedplug.pair_rule_forward
    with pytest.raises(RuntimeError, match="2-D"):
        op(torch.randn(4), labels, params, codes, False)
    with pytest.raises(TypeError, match="pair_rule_forward: embeddings must be float32 or float64"):
        op(torch.randn(4, 3).half(), labels, params, codes, False)
    with pytest.raises(RuntimeError, match="one label per embedding"):
        op(torch.randn(5, 3), labels, params, codes, False)
    with pytest.raises(TypeError, match="pair_rule_forward: labels must be int64"):
        op(torch.randn(4, 3), labels.int(), params, codes, False)
    with pytest.raises(RuntimeError, match="empty batch"):
        op(torch.randn(0, 3), labels[:0], params, codes, False)
    with pytest.raises(ValueError, match="21 codes and 14 params"):
        op(torch.randn(4, 3), labels, params[:-1], codes, False)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        op(torch.randn(4, 3), labels, [0.0 if i == 4 else p for i, p in enumerate(params)], codes, False)
    with pytest.raises(ValueError, match="must be finite"):
        op(torch.randn(4, 3), labels, [float("nan")] + params[1:], codes, False)
    with pytest.raises(ValueError, match="out of range"):
        op(torch.randn(4, 3), labels, params, [9] + codes[1:], False)
    with pytest.raises(ValueError, match="one Gram matrix"):
        op(torch.randn(4, 3), labels, params, [2] + codes[1:], False)
    with pytest.raises(RuntimeError, match="grad_loss_sums must be"):
        torch.ops.embedplug._pair_rule_backward(torch.randn(2, 4), torch.randn(4, 3), labels, torch.empty(0), params, codes)


@requires_cuda
@requires_extension
@each_rule
@pytest.mark.parametrize("n", [300, 2100])
def test_cuda_matches_cpu(rule, n):
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(n, 32, generator=generator)
    labels = torch.randint(0, n // 6, (n,), generator=generator)
    streams = 2 if rule.reducer.over == "pairs_of_each_side" else 1
    for weights in (torch.randn(streams, n, generator=generator), torch.full((streams, n), 0.5)):
        on_cuda = sums_and_grad(fused, rule, embeddings.cuda(), labels.cuda(), weights.cuda())
        expected = sums_and_grad(fused, rule, embeddings, labels, weights)
        torch.testing.assert_close(on_cuda[0][0].cpu(), expected[0][0], rtol=1e-4, atol=1e-5)
        for index in range(1, 5):
            assert torch.equal(on_cuda[0][index].cpu(), expected[0][index]), f"output {index}"
        torch.testing.assert_close(on_cuda[1].cpu(), expected[1], rtol=1e-4, atol=1e-5)
