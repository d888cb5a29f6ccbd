"""The rule losses follow the sentence-transformers loss contract, are registered by name (PML
prefix), are label-aware for ``embedplug train``, report that they run the reference, gather across
devices, and ``make_loss_class`` turns a rule (or a rule-building function) into such a class."""

from __future__ import annotations

import inspect

import pytest
import torch
from pair_rule_cases import pml_cases

import embedplug
from embedplug import losses
from embedplug.losses import PairRuleLoss, make_loss_class
from embedplug.pair_rules import presets

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

# embedplug class -> (PML class, its hyper-parameters and defaults, in PML's order)
BUILTINS = {
    "PMLContrastiveLoss": ("ContrastiveLoss", {"pos_margin": 0.0, "neg_margin": 1.0}),
    "PMLNTXentLoss": ("NTXentLoss", {"temperature": 0.07}),
    "PMLGeneralizedLiftedStructureLoss": ("GeneralizedLiftedStructureLoss", {"neg_margin": 1.0, "pos_margin": 0.0}),
    "PMLTupletMarginLoss": ("TupletMarginLoss", {"margin": 5.73, "scale": 64.0}),
}
each_builtin = pytest.mark.parametrize("name", list(BUILTINS))


class Embedder(torch.nn.Module):
    """Stands in for a SentenceTransformer: features in, ``{"sentence_embedding": ...}`` out."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4).double()

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"])}


@each_builtin
def test_registered_by_name_and_label_aware(name):
    from embedplug.train.losses import requires_labels

    cls = getattr(losses, name)
    assert embedplug.get_loss(name) is cls and cls in losses.BUILTIN_LOSSES
    assert requires_labels(cls) and cls.embedplug_label_aware is True
    # sentence-transformers' class of the PML name (if any) keeps its name.
    assert embedplug.get_loss("ContrastiveLoss").__module__.startswith("sentence_transformers")


@each_builtin
def test_signature_defaults_config_and_citation(name):
    pml_name, parameters = BUILTINS[name]
    cls = getattr(losses, name)
    signature = inspect.signature(cls.__init__).parameters
    assert list(signature) == ["self", "model", *parameters, "gather_across_devices"]
    assert {key: signature[key].default for key in parameters} == parameters
    pml_signature = inspect.signature(getattr(pml_losses, pml_name).__init__).parameters
    assert list(pml_signature)[1 : 1 + len(parameters)] == list(parameters)
    assert {key: pml_signature[key].default for key in parameters} == parameters
    model = torch.nn.Linear(2, 2)
    instance = cls(model)
    assert instance.model is model and instance.sentence_embedder is model
    assert instance.get_config_dict() == parameters
    assert cls(model, gather_across_devices=True).get_config_dict() == {**parameters, "gather_across_devices": True}
    assert instance.citation.lstrip().startswith(("@inproceedings", "@misc"))


@each_builtin
def test_forward_embeds_the_first_column_and_equals_pml(name):
    pml_name, _ = BUILTINS[name]
    embedder = Embedder()
    features = {"x": torch.randn(12, 3, dtype=torch.float64)}
    labels = torch.arange(12) // 3
    value = getattr(losses, name)(embedder)([features], labels)
    torch.testing.assert_close(value, getattr(pml_losses, pml_name)()(embedder(features)["sentence_embedding"], labels))
    value.backward()
    assert embedder.linear.weight.grad is not None and torch.isfinite(embedder.linear.weight.grad).all()


@each_builtin
def test_backend_info_says_fused(name):
    from embedplug.implementations import FUSED, implementation_of
    from embedplug.ops import pair_rule as pair_rule_op
    from embedplug.train.losses import describe_backend

    loss = getattr(losses, name)(None)
    reason = "embedplug._C kernel for CPU"
    if loss.rule.positives.measure in ("euclidean", "squared_euclidean"):
        reason += pair_rule_op.DISTANCE_NOTE
    assert loss.backend_info() == {"implementation": "fused", "reason": reason}
    assert implementation_of(type(loss)) == FUSED
    assert describe_backend(loss).endswith("on embedplug's fused C++ extension (CPU kernels, OpenMP)")


def test_backend_info_says_reference_when_forced():
    from embedplug.ops import force_reference

    with force_reference():
        report = losses.PMLNTXentLoss(None).backend_info()
    assert report["implementation"] == "reference" and "forced" in report["reason"]


def test_a_rule_loss_trains():
    embedder = Embedder()
    loss = losses.PMLNTXentLoss(embedder, temperature=0.5)
    optimizer = torch.optim.SGD(embedder.parameters(), lr=0.5)
    features = {"x": torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))}
    labels = torch.arange(16) % 4
    before = loss([features], labels).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss([features], labels).backward()
        optimizer.step()
    assert loss([features], labels).item() < before


def test_embedplug_train_builds_a_rule_loss_from_its_config(tmp_path, monkeypatch):
    from train.wordnet_run_helpers import small_wordnet, supersense_config

    from embedplug.train.config import load_config
    from embedplug.train.losses import build_loss, check_data_fits_loss, loss_class

    overrides = ["loss.name=PMLTupletMarginLoss", "loss.options={margin=3.0, scale=32.0}"]
    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), overrides)
    cls = loss_class(config)
    check_data_fits_loss(cls, config, "label", ["text", "label"])  # labelled data fits: no error
    loss = build_loss(cls, config, None, lambda: None)
    assert isinstance(loss, losses.PMLTupletMarginLoss) and loss.get_config_dict() == {"margin": 3.0, "scale": 32.0}
    assert loss.rule == presets.tuplet_margin(3.0, 32.0)


def test_gathers_across_devices_when_distributed(monkeypatch):
    # A stand-in for a second rank: the loss must see the gathered batch, not the local one.
    import embedplug.distributed as distributed

    other_rank = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 2, 2])
    local = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 3, 3, 2])
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(
        distributed,
        "gather_labelled_batch",
        lambda embeddings, labels, caller: (torch.cat([embeddings, other_rank[0]]), torch.cat([labels, other_rank[1]])),
    )
    whole = torch.cat([local[0], other_rank[0]]), torch.cat([local[1], other_rank[1]])
    gathered = losses.PMLContrastiveLoss(None, gather_across_devices=True).compute_loss_from_embeddings(
        [local[0]], local[1]
    )
    torch.testing.assert_close(gathered, pml_losses.ContrastiveLoss()(*whole))
    alone = losses.PMLContrastiveLoss(None).compute_loss_from_embeddings([local[0]], local[1])
    torch.testing.assert_close(alone, pml_losses.ContrastiveLoss()(*local))


def test_pair_rule_loss_takes_any_rule():
    case = {case.id: case for case in pml_cases()}["generalized-lifted-margins"]
    embeddings, labels = torch.randn(10, 4, dtype=torch.float64), torch.arange(10) // 2
    loss = PairRuleLoss(None, case.rule)
    torch.testing.assert_close(loss.compute_loss_from_embeddings([embeddings], labels), case.pml(embeddings, labels))
    assert loss.get_config_dict()["rule"]["combine"] == {"kind": "hinge_of_sum", "zero_unless_both_sides": False}
    assert not hasattr(loss, "citation")  # sentence-transformers' model card then writes none
    with pytest.raises(TypeError, match="rule must be an embedplug.pair_rules.PairRule"):
        PairRuleLoss(None, "contrastive")


def test_make_loss_class_from_a_rule_building_function():
    def ntxent_like(temperature: float = 0.07, *, scale_note: str = "none"):
        """NTXent, as a plugin would write it."""
        return presets.ntxent(temperature)

    cls = make_loss_class(ntxent_like, name="PluginNTXentLoss", citation="@misc{x}")
    assert cls.__name__ == "PluginNTXentLoss" and cls.__module__ == __name__ and issubclass(cls, PairRuleLoss)
    assert list(inspect.signature(cls).parameters) == ["model", "temperature", "scale_note", "gather_across_devices"]
    instance = cls(None, 0.2)
    assert instance.rule == presets.ntxent(0.2) and instance.get_config_dict() == {
        "temperature": 0.2,
        "scale_note": "none",
    }
    assert instance.citation == "@misc{x}" and "NTXent, as a plugin would write it." in cls.__doc__
    assert cls(None, temperature=0.3, gather_across_devices=True).get_config_dict()["gather_across_devices"] is True
    with pytest.raises(TypeError):
        cls(None, unknown_option=1)


def test_make_loss_class_from_a_fixed_rule():
    cls = make_loss_class(presets.contrastive(0.1, 0.9), name="FixedContrastive")
    assert list(inspect.signature(cls).parameters) == ["model", "gather_across_devices"]
    assert cls(None).rule == presets.contrastive(0.1, 0.9)


@pytest.mark.parametrize(
    "rule, name, error, match",
    [
        ("contrastive", "Loss", TypeError, "rule must be a PairRule or a function returning one"),
        (presets.ntxent, "not a name", ValueError, "name must be a Python identifier"),
        (lambda *options: presets.ntxent(), "Loss", TypeError, "must be nameable"),
        (lambda model=None: presets.ntxent(), "Loss", TypeError, "may not take a parameter named 'model'"),
    ],
)
def test_make_loss_class_refuses_what_cannot_be_a_loss(rule, name, error, match):
    with pytest.raises(error, match=match):
        make_loss_class(rule, name=name)


def test_a_function_that_returns_no_rule_fails_at_construction():
    cls = make_loss_class(lambda margin=1.0: {"margin": margin}, name="Broken")
    with pytest.raises(TypeError, match="must return a PairRule, got dict"):
        cls(None)
