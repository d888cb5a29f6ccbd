"""A pair rule is data, checked when it is built: each error names the part at fault."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from embedplug.functional import pair_rule_loss
from embedplug.ops import pair_rule_forward
from embedplug.pair_rules import (
    Affine,
    Combine,
    MiningFilter,
    PairRule,
    PairRuleError,
    Reducer,
    SelfPacedWeight,
    Side,
    VersusLse,
    presets,
)

LOGIT = Side("cosine")
HINGE_PAIRS = Side("euclidean", term="hinge", reduction="pairs")


def rule(**changes) -> PairRule:
    """A valid anchor-level rule with ``changes``."""
    return dataclasses.replace(PairRule(LOGIT, LOGIT, combine=Combine("sum")), **changes)


BAD_RULES = {
    "temperature": (lambda: Affine(temperature=0.0), PairRuleError, r"Affine\.temperature must be > 0"),
    "nan scale": (lambda: Affine(scale=float("nan")), PairRuleError, r"Affine\.scale must be a finite number"),
    "bool shift": (lambda: Affine(shift=True), TypeError, r"Affine\.shift must be a real number"),
    "measure": (lambda: Side("manhattan"), PairRuleError, r"Side\.measure must be one of 'cosine', 'dot'"),
    "cosine unnormalised": (
        lambda: Side("cosine", normalize=False),
        PairRuleError,
        r"Side\.normalize: .*use measure 'dot'",
    ),
    "dot normalised": (lambda: Side("dot", normalize=True), PairRuleError, r"Side\.normalize: .*measure 'cosine'"),
    "angle on a distance": (
        lambda: Side("euclidean", angle_offset=0.1),
        PairRuleError,
        r"Side\.angle_offset: needs measure 'cosine'",
    ),
    "callable term": (
        lambda: Side(term=torch.relu),
        TypeError,
        r"Side\.term must be .*a rule holds data, not functions",
    ),
    "term name": (lambda: Side(term="softplus"), PairRuleError, r"Side\.term must be one of 'logit', 'hinge'"),
    "callable weight": (lambda: Side(weight=lambda s: s), TypeError, r"Side\.weight must be a SelfPacedWeight or None"),
    "weight flag": (
        lambda: SelfPacedWeight(0.5, increasing=1),
        TypeError,
        r"SelfPacedWeight\.increasing must be True or False",
    ),
    "filter epsilon": (
        lambda: MiningFilter(float("inf")),
        PairRuleError,
        r"MiningFilter\.epsilon must be a finite number",
    ),
    "lse of a hinge": (
        lambda: Side(term="hinge", reduction="lse"),
        PairRuleError,
        r"Side\.reduction: 'lse' reduces logits; a 'hinge'",
    ),
    "lse of versus": (
        lambda: Side(term=VersusLse("pair_and_negatives"), reduction="lse_add_one"),
        PairRuleError,
        r"Side\.reduction: 'lse_add_one' reduces logits; a VersusLse",
    ),
    "zero output scale": (lambda: Side(output_scale=0), PairRuleError, r"Side\.output_scale must not be 0"),
    "versus reference": (lambda: VersusLse("everything"), PairRuleError, r"VersusLse\.reference must be one of"),
    "versus partner rows": (
        lambda: VersusLse("positives_and_negatives", rows="anchor_and_positive"),
        PairRuleError,
        r"VersusLse\.rows: 'anchor_and_positive' .* needs reference 'negatives' or 'pair_and_negatives'",
    ),
    "combine kind": (lambda: Combine("product"), PairRuleError, r"Combine\.kind must be one of"),
    "reducer kind": (
        lambda: Reducer("median"),
        PairRuleError,
        r"Reducer\.kind must be one of 'mean', 'sum', 'avg_non_zero'",
    ),
    "reducer over": (lambda: Reducer(over="batches"), PairRuleError, r"Reducer\.over must be one of"),
    "side type": (lambda: PairRule("cosine", LOGIT), TypeError, r"PairRule\.positives must be a Side"),
    "no combine": (lambda: PairRule(LOGIT, LOGIT), PairRuleError, r"combine: reducer\.over='anchors' needs a Combine"),
    "combine at pair level": (
        lambda: PairRule(HINGE_PAIRS, HINGE_PAIRS, Reducer(over="pairs_of_each_side"), Combine("sum")),
        PairRuleError,
        r"combine: reducer\.over='pairs_of_each_side' reduces pair terms directly",
    ),
    "pairs at anchor level": (
        lambda: rule(negatives=HINGE_PAIRS),
        PairRuleError,
        r"negatives\.reduction: 'pairs' hands each pair's term to the batch reducer, but reducer\.over is 'anchors'",
    ),
    "per-anchor at pair level": (
        lambda: PairRule(
            HINGE_PAIRS, Side("euclidean", term="hinge", reduction="sum"), Reducer(over="pairs_of_each_side")
        ),
        PairRuleError,
        r"negatives\.reduction: reducer\.over='pairs_of_each_side' reduces that side's pair terms",
    ),
    "versus on negatives": (
        lambda: rule(negatives=Side(term=VersusLse("pair_and_negatives"), reduction="mean")),
        PairRuleError,
        r"negatives\.term: a VersusLse term .* defined on positives only",
    ),
    "versus reads hinge negatives": (
        lambda: rule(
            positives=Side(term=VersusLse("pair_and_negatives"), reduction="mean"),
            negatives=Side(term="hinge", reduction="sum"),
        ),
        PairRuleError,
        r"negatives\.term: the positives' VersusLse term reads the negatives' logits",
    ),
    "negatives never read": (
        lambda: rule(combine=Combine("positives")),
        PairRuleError,
        r"negatives: this rule never reads them",
    ),
    "reference negatives not lse": (
        lambda: rule(
            positives=Side(term=VersusLse("pair_and_negatives"), reduction="mean"),
            negatives=Side(reduction="sum"),
            combine=Combine("positives"),
        ),
        PairRuleError,
        r"negatives\.reduction: the negatives enter this rule only through the log-sum-exp .* set 'lse', got 'sum'",
    ),
    "filter across measures": (
        lambda: rule(positives=Side("cosine", filter=MiningFilter(0.1)), negatives=Side("euclidean")),
        PairRuleError,
        r"positives\.filter: a MiningFilter compares .* both sides need one measure",
    ),
    "avg_non_zero of lse": (
        lambda: rule(reducer=Reducer("avg_non_zero")),
        PairRuleError,
        r"reducer: 'avg_non_zero' counts the terms that are > 0 in exact arithmetic.*positives: the 'lse' reduction of a logit",
    ),
    "avg_non_zero of negated values": (
        lambda: rule(
            positives=Side(reduction="lse_add_one", output_scale=-1.0),
            negatives=Side(reduction="lse_add_one"),
            reducer=Reducer("avg_non_zero"),
        ),
        PairRuleError,
        r"positives: output_scale -1\.0 < 0",
    ),
    "avg_non_zero against negatives alone": (
        lambda: PairRule(
            Side(term=VersusLse("negatives"), reduction="pairs"), Side(), Reducer("avg_non_zero", over="positive_pairs")
        ),
        PairRuleError,
        r"positives: a VersusLse term against the negatives alone .* can be negative",
    ),
    "preset hyper-parameter": (lambda: presets.ntxent(temperature=0.0), ValueError, r"presets\.ntxent: temperature"),
    "preset nan margin": (lambda: presets.contrastive(neg_margin=float("nan")), ValueError, r"neg_margin"),
}


@pytest.mark.parametrize("name", list(BAD_RULES))
def test_bad_rule_gets_an_error_naming_the_part(name):
    build, error, match = BAD_RULES[name]
    with pytest.raises(error, match=match):
        build()


def test_rules_are_frozen_hashable_data():
    built = presets.multi_similarity()
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.positives = LOGIT
    assert built == presets.multi_similarity() and hash(built) == hash(presets.multi_similarity())
    # Plain numbers and names all the way down: a kernel (or a JSON file) can take it.
    assert json.loads(json.dumps(built.as_dict()))["positives"]["filter"] == {"epsilon": 0.1}


def test_replace_checks_again():
    with pytest.raises(PairRuleError, match="combine"):
        dataclasses.replace(presets.supcon(), combine=None)


def test_normalize_defaults_per_measure():
    assert Side("cosine").normalize and not Side("dot").normalize
    assert Side("euclidean").normalize and not Side("euclidean", normalize=False).normalize


def test_avg_non_zero_rules_that_make_zeros_known_are_accepted():
    # A hinge per pair, log(1 + sum) per anchor, softplus / hinge combines, and -log softmax.
    for rule_ in (
        presets.contrastive(),
        presets.supcon(),
        presets.circle(),
        rule(
            positives=Side(reduction="lse_add_one"),
            negatives=Side(reduction="lse_add_one"),
            reducer=Reducer("avg_non_zero"),
        ),
        rule(combine=Combine("hinge_of_sum"), reducer=Reducer("avg_non_zero")),
    ):
        assert rule_.reducer.kind == "avg_non_zero"


@pytest.mark.parametrize(
    "embeddings, labels, error, match",
    [
        (torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long), ValueError, "2-D"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "floating-point"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "expects 4 labels"),
        (torch.randn(4, 3), torch.tensor([0.0, float("nan"), 1.0, 1.0]), ValueError, "labels contain NaN"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty batch"),
        (torch.randn(4, 0), torch.zeros(4, dtype=torch.long), ValueError, "D = 0"),
        (torch.randn(4, 3), [0, 0, 1, 1], TypeError, "torch.Tensor"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long, device="meta"), ValueError, "move them to one device"),
        (torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"), ValueError, "meta device"),
    ],
    ids=[
        "3-D",
        "integer embeddings",
        "label count",
        "NaN labels",
        "empty",
        "no features",
        "list labels",
        "device",
        "meta",
    ],
)
@pytest.mark.parametrize("entry", [pair_rule_forward, pair_rule_loss], ids=["op", "functional"])
def test_bad_input_gets_a_clear_error(entry, embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        entry(embeddings, labels, presets.contrastive())


@pytest.mark.parametrize("entry", [pair_rule_forward, pair_rule_loss], ids=["op", "functional"])
def test_a_rule_must_be_a_pair_rule(entry):
    with pytest.raises(TypeError, match="rule must be an embedplug.pair_rules.PairRule"):
        entry(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), {"positives": "cosine"})


def test_labels_of_shape_n_by_1_are_accepted():
    embeddings = torch.randn(8, 4, dtype=torch.float64)
    labels = torch.arange(8) // 2
    rule_ = presets.ntxent()
    torch.testing.assert_close(
        pair_rule_loss(embeddings, labels.unsqueeze(1), rule_), pair_rule_loss(embeddings, labels, rule_)
    )
