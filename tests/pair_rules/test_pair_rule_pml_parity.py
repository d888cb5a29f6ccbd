"""Every pair-rule preset against pytorch-metric-learning 2.9 itself: value and gradient, float64
(1e-6) and float32 (1e-5), over adversarial label structures (one class, all distinct, pairs,
singletons), duplicates, well-separated classes, low temperatures and large scales."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pair_rule_cases import assert_matches_pml, duplicates, pml_cases, structures, well_separated

pytest.importorskip("pytorch_metric_learning")

CASES = pml_cases()
each_case = pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
each_dtype = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


@each_case
@each_dtype
def test_small_batches_and_degenerate_label_structures(case, dtype):
    generator = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 5):
        for name, labels in structures(n, generator).items():
            embeddings = torch.randn(n, 6, generator=generator, dtype=dtype)
            assert_matches_pml(case, embeddings, labels, f"n={n} {name}")


@each_case
@each_dtype
def test_label_structures_random_and_well_separated(case, dtype):
    # N = 40 > 25: torch.cdist takes its matrix-product path, as in PML.
    generator = torch.Generator().manual_seed(7)
    for name, labels in structures(40, generator).items():
        assert_matches_pml(case, torch.randn(40, 16, generator=generator, dtype=dtype), labels, f"random {name}")
        embeddings = well_separated(labels, 16, dtype, generator)
        assert_matches_pml(case, embeddings, labels, f"well separated {name}")


@each_case
@each_dtype
def test_duplicates_and_axis_vectors(case, dtype):
    if not case.smooth_at_exact_similarities:
        pytest.skip("acos has an infinite derivative at cosines of exactly +-1, in PML too")
    generator = torch.Generator().manual_seed(11)
    basis = torch.cat([torch.eye(4), -torch.eye(4)]).to(dtype)
    axes = basis[torch.randint(0, 8, (32,), generator=generator)] * torch.randint(1, 4, (32, 1), generator=generator)
    batches = {"duplicates": duplicates(32, 8, dtype, generator), "axes": axes}
    if case.id == "multi-similarity-mined":
        # A positive and a negative copied from one point tie at the miner's strict threshold, and the
        # GEMM's last bit decides the side (in PML too): axis vectors only.
        del batches["duplicates"]
    for name, embeddings in batches.items():
        for labels in (torch.randint(0, 4, (32,), generator=generator), torch.arange(32) // 4):
            assert_matches_pml(case, embeddings, labels, name)


@each_case
def test_half_precision_runs_in_float32(case):
    from embedplug.functional import pair_rule_loss

    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(24, 8, generator=generator)
    labels = torch.arange(24) // 4
    half = embeddings.half().requires_grad_()
    value = pair_rule_loss(half, labels, case.rule)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.float16
    torch.testing.assert_close(value.detach(), case.pml(half.detach().float(), labels), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=24),
    case=st.sampled_from(CASES),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_property_equals_pytorch_metric_learning(labels, case, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    embeddings = torch.randn(labels.numel(), 5, generator=generator, dtype=torch.float64) * scale
    assert_matches_pml(case, embeddings, labels)


@pytest.mark.parametrize("case", [case for case in CASES if case.exact], ids=lambda case: case.id)
def test_the_exact_count_oracle_is_pml_where_nothing_rounds(case):
    # Moderate temperature / gamma on random float64 data: no per-anchor loss rounds to 0, so PML's
    # own AvgNonZeroReducer and the structure-counted oracle agree, value and gradient.
    from pair_rule_cases import assert_equal_losses

    generator = torch.Generator().manual_seed(2)
    for name, labels in structures(24, generator).items():
        embeddings = torch.randn(24, 8, generator=generator, dtype=torch.float64)
        assert_equal_losses(case.exact, case.pml, embeddings, labels, name)


def test_float32_pml_drops_anchors_whose_loss_rounded_to_zero_and_the_rule_does_not():
    # Class 1's two points are far closer to each other than to any negative: at T = 0.02 their
    # -log softmax is ~e^-50, which rounds to 0 (in float64 too), so PML's AvgNonZero averages over
    # class 2's anchors only; the rule counts all four anchors with a positive.
    from pytorch_metric_learning import losses

    from embedplug.functional import pair_rule_loss
    from embedplug.pair_rules import presets

    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [-1.0, 0.0], [0.0, -1.0], [-0.7, -0.7]])
    labels = torch.tensor([0, 1, 1, 2, 2, 3])
    ours = pair_rule_loss(embeddings, labels, presets.supcon(0.02))
    pml = losses.SupConLoss(temperature=0.02)(embeddings, labels)
    oracle = next(case for case in CASES if case.id == "supcon-low-temperature").exact(embeddings, labels)
    torch.testing.assert_close(ours, oracle)
    torch.testing.assert_close(ours, pml / 2)
