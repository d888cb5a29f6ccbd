"""Losses defined by a :class:`~embedplug.pair_rules.PairRule`: :class:`PairRuleLoss`, and
:func:`make_loss_class`, which turns a rule (or a function building one from hyper-parameters) into
a registrable loss class in one line."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from embedplug.functional.pair_rule import pair_rule_loss
from embedplug.losses.base import LabelledBatchLoss
from embedplug.ops import pair_rule as pair_rule_op
from embedplug.pair_rules import PairRule


class PairRuleLoss(LabelledBatchLoss):
    """A label-aware pair loss described by a :class:`~embedplug.pair_rules.PairRule`, following the
    sentence-transformers loss contract (one text column with integer class labels).

    The rule runs on the fused pair-rule kernel (``embedplug::pair_rule_forward``, CPU and CUDA, O(N)
    memory) where the extension has one, else on the exact pure-torch interpreter;
    :meth:`backend_info` says which.

    Args:
        model: the SentenceTransformer being trained.
        rule: the :class:`~embedplug.pair_rules.PairRule`.
        gather_across_devices: gather embeddings and labels from every rank (see
            :class:`~embedplug.losses.base.LabelledBatchLoss` for the value and gradient scaling).

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples
    (e.g. ``embedplug.samplers.PKBatchSampler``).
    """

    # embedplug train: single texts with class labels (the loss contract's declaration).
    embedplug_label_aware = True
    embedplug_ops = ("pair_rule_forward",)
    # A BibTeX entry for the model card, or None (no citation is written).
    rule_citation: str | None = None

    def __init__(self, model: nn.Module, rule: PairRule, gather_across_devices: bool = False) -> None:
        super().__init__(model)
        if not isinstance(rule, PairRule):
            raise TypeError(
                f"{type(self).__name__}: rule must be an embedplug.pair_rules.PairRule, got {type(rule).__name__}"
            )
        self.rule = rule
        self.gather_across_devices = gather_across_devices

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return pair_rule_loss(embeddings, labels, self.rule)

    def backend_info(self, device_type: str = "cpu") -> dict:
        """``{"implementation": "fused"|"reference", "reason": ...}`` of the pair-rule op on
        ``device_type``. A distance rule's small batches (at most 25 rows, or at most 2,048 with two
        rows at a distance that is mostly rounding) take the reference to equal torch.cdist; the
        reason says so."""
        report = pair_rule_op.backend(device_type)
        if report["implementation"] == "fused" and self.rule.positives.measure in ("euclidean", "squared_euclidean"):
            report = {**report, "reason": report["reason"] + pair_rule_op.DISTANCE_NOTE}
        return report

    def get_config_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.as_dict(), **self._gather_config()}

    def _gather_config(self) -> dict[str, Any]:
        return {"gather_across_devices": True} if self.gather_across_devices else {}

    @property
    def citation(self) -> str:
        if self.rule_citation is None:
            # sentence-transformers' model card skips a loss whose citation raises.
            raise AttributeError(f"{type(self).__name__} has no citation")
        return self.rule_citation


RuleOrFactory = PairRule | Callable[..., PairRule]


def make_loss_class(
    rule: RuleOrFactory, name: str, *, doc: str | None = None, citation: str | None = None, module: str | None = None
) -> type[PairRuleLoss]:
    """A :class:`PairRuleLoss` subclass named ``name``, ready for ``register(...)`` in a plugin's
    ``embedplug_register_losses`` hook.

    Args:
        rule: a :class:`~embedplug.pair_rules.PairRule` (the class's constructor is then
            ``(model, *, gather_across_devices=False)``), or a function returning one from
            hyper-parameters, e.g. ``lifted_structure(neg_margin=1.0, pos_margin=0.0)``: its parameters
            become the constructor's, after ``model`` (so ``embedplug train`` can pass them from a
            config) and the rule is built once per instance.
        name: the class name (a Python identifier), also its default registered name.
        doc: the class docstring (default: one naming the rule or the function).
        citation: a BibTeX entry for sentence-transformers' model card, or None.
        module: the ``__module__`` to give the class (default: the caller's module, so the
            class is attributed to the plugin that made it).

    Returns:
        The new class. ``get_config_dict()`` returns the hyper-parameters (or the rule as a dict).

    Raises:
        TypeError: ``rule`` is neither a PairRule nor a function returning one, or takes
            ``*args``/``**kwargs``; ValueError: ``name`` is not an identifier.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"make_loss_class: name must be a Python identifier, got {name!r}")
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__", __name__)
    if isinstance(rule, PairRule):
        return _fixed_rule_class(rule, name, doc, citation, module)
    if not callable(rule):
        raise TypeError(
            f"make_loss_class: rule must be a PairRule or a function returning one, got {type(rule).__name__}"
        )
    return _factory_class(rule, name, doc, citation, module)


def _fixed_rule_class(rule: PairRule, name: str, doc, citation, module) -> type[PairRuleLoss]:
    def __init__(self, model: nn.Module, *, gather_across_devices: bool = False) -> None:
        PairRuleLoss.__init__(self, model, rule, gather_across_devices=gather_across_devices)

    namespace = {
        "__init__": __init__,
        "__doc__": doc or f"{name}: a PairRuleLoss for a fixed rule ({PairRuleLoss.__name__}, see ``rule``).",
        "__module__": module,
        "rule_citation": citation,
    }
    return type(name, (PairRuleLoss,), namespace)


def _factory_class(factory: Callable[..., PairRule], name: str, doc, citation, module) -> type[PairRuleLoss]:
    factory_signature = inspect.signature(factory)
    for parameter in factory_signature.parameters.values():
        if parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.POSITIONAL_ONLY,
        ):
            raise TypeError(
                f"make_loss_class: {factory.__name__}'s parameters become the loss's constructor arguments and must "
                f"be nameable; {parameter} is not"
            )
        if parameter.name in ("self", "model", "gather_across_devices"):
            raise TypeError(f"make_loss_class: {factory.__name__} may not take a parameter named {parameter.name!r}")

    def __init__(self, model: nn.Module, *args, gather_across_devices: bool = False, **kwargs) -> None:
        bound = factory_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        built = factory(**options)
        if not isinstance(built, PairRule):
            raise TypeError(f"{name}: {factory.__name__} must return a PairRule, got {type(built).__name__}")
        PairRuleLoss.__init__(self, model, built, gather_across_devices=gather_across_devices)
        self.rule_options = options

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.rule_options, **self._gather_config()}

    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    model_parameter = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=nn.Module)
    gather_parameter = inspect.Parameter(
        "gather_across_devices", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool
    )
    __init__.__signature__ = inspect.Signature(
        [self_parameter, model_parameter, *factory_signature.parameters.values(), gather_parameter]
    )
    namespace = {
        "__init__": __init__,
        "get_config_dict": get_config_dict,
        "__doc__": doc
        or f"{name}: the PairRuleLoss of ``{factory.__name__}``'s rule.\n\n{inspect.getdoc(factory) or ''}",
        "__module__": module,
        "rule_citation": citation,
    }
    return type(name, (PairRuleLoss,), namespace)
