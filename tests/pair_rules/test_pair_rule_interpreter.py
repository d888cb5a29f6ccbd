"""The interpreter's outputs (per-anchor sums, exact counts, pair counts) and the batch reducer."""

from __future__ import annotations

import torch

from embedplug.ops.pair_rule import pair_rule_forward, reduce_pair_rule
from embedplug.pair_rules import Affine, Combine, PairRule, Reducer, Side, presets


def test_avg_non_zero_counts_terms_that_float_rounding_made_zero():
    # Class 0: two copies of e1, so log(1 + e^{-200 s}) = log(1 + e^-200), 0 in float32 (and float64)
    # but > 0 exactly; class 1: e2 and -e2, log(1 + e^200) = 200. The negatives' terms,
    # log(1 + sum e^{s - 1000}), are rounded zeros too. Exact counting averages over all 4 anchors.
    rule = PairRule(
        positives=Side("cosine", affine=Affine(scale=-200.0), reduction="lse_add_one"),
        negatives=Side("cosine", affine=Affine(shift=1000.0), reduction="lse_add_one"),
        combine=Combine("sum"),
        reducer=Reducer("avg_non_zero"),
    )
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    outputs = pair_rule_forward(embeddings, labels, rule)
    assert outputs.loss_sums[0, :2].tolist() == [0.0, 0.0]
    assert outputs.counted.tolist() == [[1, 1, 1, 1]]
    loss = reduce_pair_rule(rule, embeddings, outputs)
    torch.testing.assert_close(loss, torch.tensor(100.0))  # a float test of "> 0" would give 200


def test_outputs_are_per_anchor_with_pair_counts():
    embeddings = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    anchors = pair_rule_forward(embeddings, labels, presets.multi_similarity(mining_epsilon=None))
    assert anchors.loss_sums.shape == (1, 7) and anchors.terms.tolist() == [[1] * 7]
    assert anchors.positive_pairs.tolist() == [2, 2, 2, 1, 1, 0, 0]
    assert anchors.negative_pairs.tolist() == [4, 4, 4, 5, 5, 6, 6]
    # log(1 + sum) > 0 for every anchor with a pair.
    assert anchors.counted.tolist() == [[1] * 7]
    # Plain log-sum-exps can be negative: no count is known (-1).
    unknown = pair_rule_forward(embeddings, labels, PairRule(Side(), Side(), combine=Combine("sum")))
    assert unknown.counted.tolist() == [[-1] * 7]
    per_pair = pair_rule_forward(embeddings, labels, presets.ntxent())
    assert per_pair.terms.tolist() == [[2, 2, 2, 1, 1, 0, 0]]
    each_side = pair_rule_forward(embeddings, labels, presets.contrastive())
    assert each_side.loss_sums.shape == (2, 7)
    assert each_side.terms.tolist() == [[2, 2, 2, 1, 1, 0, 0], [4, 4, 4, 5, 5, 6, 6]]


def test_contrastive_counts_only_active_hinges():
    # Three points on a line: d(0, 1) = 0 (inactive positive hinge at pos_margin 0), the negatives
    # at distance 2 (inactive at neg_margin 1) or sqrt(2) (inactive too).
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    outputs = pair_rule_forward(embeddings, labels, presets.contrastive())
    # Positives: (0,1),(1,0) at d = 0 inactive; (2,3),(3,2) at sqrt(2) active.
    assert outputs.counted[0].tolist() == [0, 0, 1, 1]
    assert outputs.counted[1].tolist() == [0, 0, 0, 0]
    loss = reduce_pair_rule(presets.contrastive(), embeddings, outputs)
    torch.testing.assert_close(loss, torch.tensor(2.0).sqrt())


def test_degenerate_batches_give_a_zero_loss_with_a_zero_gradient():
    # Every PML pair loss exits early with at most one pair of each kind (N = 1); those needing both
    # kinds of pairs also on one class and on all-distinct labels.
    one_kind = (torch.zeros(5, dtype=torch.long), torch.arange(5))
    cases = [(rule, torch.tensor([0])) for rule in (presets.contrastive(), presets.generalized_lifted_structure())]
    cases += [
        (rule, labels) for rule in (presets.ntxent(), presets.supcon(), presets.tuplet_margin()) for labels in one_kind
    ]
    for rule, labels in cases:
        embeddings = torch.randn(labels.numel(), 3, requires_grad=True)
        loss = reduce_pair_rule(rule, embeddings, pair_rule_forward(embeddings, labels, rule))
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_circle_counts_anchors_whose_softplus_underflowed():
    # Class 0 (two copies of e1, negatives at cosine 0) has lse_p + lse_n = -256 at gamma 2048:
    # softplus is e^-256, 0 in float32 but > 0 exactly. Class 1 (e2 and -e2) has a large loss.
    from pair_rule_cases import circle_counted, exactly_counted
    from pytorch_metric_learning import losses

    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    rule = presets.circle(0.25, 2048.0)
    outputs = pair_rule_forward(embeddings, labels, rule)
    assert outputs.loss_sums[0, :2].tolist() == [0.0, 0.0] and outputs.counted.tolist() == [[1, 1, 1, 1]]
    ours = reduce_pair_rule(rule, embeddings, outputs)
    exact = exactly_counted(losses.CircleLoss, circle_counted, m=0.25, gamma=2048.0)(embeddings, labels)
    torch.testing.assert_close(ours, exact)
    torch.testing.assert_close(ours, losses.CircleLoss(m=0.25, gamma=2048.0)(embeddings, labels) / 2)
