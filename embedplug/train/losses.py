"""Building the configured loss from the registry: name checks, label checks, option resolution."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from embedplug.hookspecs import LABEL_AWARE, is_label_aware
from embedplug.train.config import ConfigError, LossSection, TrainConfig

_DISTANCE_OPTION = "distance_metric"


# A wrapper loss takes the loss it wraps as this constructor argument (sentence-transformers'
# MatryoshkaLoss, Matryoshka2dLoss and AdaptiveLayerLoss; a plugin's wrapper following that convention).
INNER_LOSS_PARAMETER = "loss"


def loss_class(config: TrainConfig) -> type:
    """The registered loss class of ``[loss]``; an unknown name lists the registered names and close
    matches. Every nested ``[loss.inner]`` is resolved and its nesting checked too (see :func:`loss_chain`)."""
    return loss_chain(config)[0][1]


def loss_chain(config: TrainConfig) -> list[tuple[str, type, LossSection]]:
    """``(dotted key, class, section)`` from ``[loss]`` down to its innermost ``[loss.inner...]``.

    A wrong nesting is one line naming the config key: a wrapper without ``[loss.inner]``, an inner
    loss that is not registered, or an inner loss given to a loss that wraps nothing.
    """
    chain = []
    key, section = "loss", config.loss
    while section is not None:
        cls = _registered(config, f"{key}.name", section.name)
        wraps = takes_inner_loss(cls)
        if wraps and section.inner is None:
            raise ConfigError(
                f"{config.where(f'{key}.name')}: {key}: {section.name} wraps another loss; add a [{key}.inner] table "
                f'naming it, e.g. [{key}.inner] name = "CachedGISTEmbedLoss"'
            )
        if not wraps and section.inner is not None:
            raise ConfigError(
                f"{config.where(f'{key}.inner')}: {key}.inner: {section.name} does not wrap another loss (it has "
                f"no {INNER_LOSS_PARAMETER!r} argument); remove [{key}.inner] or use a wrapper such as MatryoshkaLoss"
            )
        chain.append((key, cls, section))
        key, section = f"{key}.inner", section.inner
    return chain


def _registered(config: TrainConfig, key: str, name: str) -> type:
    import embedplug
    from embedplug.registry import UnknownNameError

    try:
        return embedplug.get_loss(name)
    except UnknownNameError as exc:
        raise ConfigError(f"{config.where(key)}: {key}: {exc}") from None


def takes_inner_loss(cls: type) -> bool:
    """Whether ``cls`` is a wrapper loss: its constructor takes the wrapped loss as ``loss``."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(INNER_LOSS_PARAMETER)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def innermost_loss(config: TrainConfig) -> tuple[str, type, LossSection]:
    """The loss that sees the data: ``[loss]`` itself, or the innermost loss a wrapper wraps."""
    return loss_chain(config)[-1]


def requires_labels(cls: type) -> bool:
    """Whether ``cls`` trains on single texts with class labels: it declares ``embedplug_label_aware = True``,
    the loss contract's declaration (see :mod:`embedplug.hookspecs`)."""
    return is_label_aware(cls)


# How the errors below name the declaration, so a plugin author knows what to set.
_DECLARATION = f"{LABEL_AWARE} = True"


def check_data_fits_loss(cls: type, config: TrainConfig, label_column: str | None, columns: list[str]) -> None:
    """A labelled loss needs a label column; a pair loss needs two or more text columns.

    For a wrapper loss the innermost loss decides (it is the one that reads the columns)."""
    if config.loss.inner is not None:
        _, cls, _ = innermost_loss(config)
    name = cls.__name__
    if requires_labels(cls) and not label_column:
        source = f"task {config.data.task!r}" if config.data.task else f"data {config.data.path!r}"
        raise ConfigError(
            f"{config.where('loss.name')}: loss {name} mines triplets from class labels (it declares {_DECLARATION}), "
            f"but {source} has no label column (columns: {', '.join(columns)}). Use the 'supersense' task or set "
            "data.label_column, or choose a pair loss such as MultipleNegativesRankingLoss."
        )
    text_columns = [column for column in columns if column != label_column]
    if not requires_labels(cls) and label_column is not None and len(text_columns) < 2:
        raise ConfigError(
            f"{config.where('loss.name')}: loss {name} trains on (anchor, positive) pairs, but the data has one text "
            f"column and labels. A loss that trains on class labels declares {_DECLARATION} on its class "
            f"({cls.__module__}.{cls.__qualname__} does not). Use such a loss, e.g. BatchHardTripletLoss with a "
            "P x K sampler, or the 'reverse-dictionary' task."
        )


def warn_without_class_sampler(cls: type, config: TrainConfig) -> None:
    """A label-aware loss learns from pairs of rows with the same label, which random batches (the
    default without a [sampler] section) may not hold: warn, naming the samplers that guarantee them."""
    if config.loss.inner is not None:
        _, cls, _ = innermost_loss(config)
    if not requires_labels(cls) or config.sampler.name:
        return
    warnings.warn(
        f"{config.where('loss.name')}: loss {cls.__name__} learns from rows that share a label, but without a "
        "[sampler] section the batches are drawn at random and may hold no two rows of one class (the loss is "
        'then 0 and nothing is learned); add [sampler] name = "PKBatchSampler" with options = { k = 4 } '
        '(or "GroupByLabelBatchSampler")',
        UserWarning,
        stacklevel=2,
    )


def resolve_options(
    cls: type, config: TrainConfig, model, load_guide, section: LossSection | None = None, key: str = "loss"
) -> dict[str, Any]:
    """Constructor keyword arguments: config options checked against the signature, plus the guide.

    ``section``/``key``: which (possibly nested) loss table, ``[loss]`` by default.
    ``distance_metric`` may be given by name (``"cosine_distance"``): it is looked up on
    ``BatchHardTripletLossDistanceFunction``, whose functions embedplug's fused losses recognise.
    """
    section = config.loss if section is None else section
    parameters = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    reserved = {"model", "guide"} | ({INNER_LOSS_PARAMETER} if takes_inner_loss(cls) else set())
    options = dict(section.options)
    for option in options:
        if option not in parameters and not accepts_any or option in reserved:
            valid = [name for name in parameters if name not in {"self", *reserved}]
            hint = ""
            if option == "guide":
                hint = " (set the guide model with [guide] path)"
            elif option == INNER_LOSS_PARAMETER and option in reserved:
                hint = f" (name the wrapped loss in a [{key}.inner] table)"
            raise ConfigError(
                f"{config.where(f'{key}.options.{option}')}: {section.name} has no option {option!r}{hint}; "
                f"its options: {', '.join(valid) or '(none)'}"
            )
    if isinstance(options.get(_DISTANCE_OPTION), str):
        options[_DISTANCE_OPTION] = _distance_function(options[_DISTANCE_OPTION], config, key)
    if "guide" in parameters:
        options["guide"] = load_guide()
    return options


def _distance_function(name: str, config: TrainConfig, key: str = "loss"):
    from sentence_transformers.sentence_transformer.losses import BatchHardTripletLossDistanceFunction

    function = getattr(BatchHardTripletLossDistanceFunction, name, None)
    if function is None or name.startswith("_"):
        known = [n for n in vars(BatchHardTripletLossDistanceFunction) if not n.startswith("_")]
        raise ConfigError(
            f"{config.where(f'{key}.options.distance_metric')}: unknown distance_metric {name!r}; "
            f"known: {', '.join(known)}"
        )
    return function


def build_loss(cls: type, config: TrainConfig, model, load_guide):
    """``cls(model, **options)`` with the config's options resolved; a wrapper gets its inner loss,
    built first, as ``loss=`` (``MatryoshkaLoss(model, loss=CachedGISTEmbedLoss(model, ...), ...)``)."""
    chain = loss_chain(config) if config.loss.inner is not None else [("loss", cls, config.loss)]
    loss = None
    for key, each_class, section in reversed(chain):
        options = resolve_options(each_class, config, model, load_guide, section, key)
        if loss is not None:
            options[INNER_LOSS_PARAMETER] = loss
        try:
            loss = each_class(model, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{config.where(f'{key}.options')}: {section.name}(**options) failed: {exc}") from None
    return loss


def describe_backend(loss) -> str:
    """Which implementation runs ``loss``: embedplug's fused extension, its pure-torch path, or another
    library; for a wrapper loss, then ``around`` the loss it wraps."""
    from torch import nn

    inner = getattr(loss, INNER_LOSS_PARAMETER, None)
    if isinstance(inner, nn.Module) and takes_inner_loss(type(loss)):
        return f"{_describe_one(loss)} around {describe_backend(inner)}"
    return _describe_one(loss)


def _describe_one(loss) -> str:
    cls = type(loss)
    where = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith("sentence_transformers."):
        return f"{where} (sentence-transformers' own implementation)"
    own_report = getattr(loss, "backend_info", None)
    # A plugin's rule loss (embedplug.losses.PairRuleLoss) runs embedplug's op: its own report says.
    if not cls.__module__.startswith("embedplug.") and not callable(own_report):
        return f"{where} (not an embedplug loss: no fused kernel)"
    if callable(own_report) and own_report().get("implementation") == "reference":
        # a loss whose op has no kernel here, or runs the reference by force.
        return f"{where} on embedplug's {own_report().get('reason')}"
    try:
        from embedplug import backend_info

        extension = backend_info().get("extension", {})
    except Exception as exc:  # a report line must never stop a finished training run
        return f"{where} (backend unknown: {exc})"
    if extension.get("loaded"):
        kind = "CUDA and CPU" if extension.get("cuda_kernels") else "CPU"
        threads = "OpenMP" if extension.get("openmp") else "single-threaded"
        return f"{where} on embedplug's fused C++ extension ({kind} kernels, {threads})"
    return f"{where} on embedplug's pure-torch fallback (extension not loaded: {extension.get('reason')})"


# What the options probe catches: a loss's own checks and the arithmetic of rejected values (1 / 0 ...).
_PROBE_ERRORS = (TypeError, ValueError, ArithmeticError, RuntimeError, NotImplementedError)


def check_loss_options(cls: type, config: TrainConfig, num_text_columns: int) -> None:
    """Build an embedplug loss with the config's options and compute it once on a small random batch,
    before the model loads, so rejected options (a zero temperature, an invalid direction ...) fail in
    seconds with the key. A stand-in model is used and GIST losses guide themselves, so nothing loads;
    losses from other libraries are only built with the real model."""
    if not cls.__module__.startswith("embedplug."):
        return
    import torch

    options = resolve_options(cls, config, None, lambda: None)
    stand_in_model = torch.nn.Sequential(torch.nn.Identity())
    generator = torch.Generator().manual_seed(0)
    try:
        loss = cls(stand_in_model, **options)
        if requires_labels(cls):
            columns = [torch.randn(8, 4, generator=generator)]
            labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        else:
            columns = [torch.randn(4, 4, generator=generator) for _ in range(max(num_text_columns, 2))]
            labels = None
        if hasattr(loss, "compute_loss_from_embeddings"):
            value = loss.compute_loss_from_embeddings(columns, labels)
        elif hasattr(loss, "calculate_loss"):
            value = loss.calculate_loss([[column] for column in columns], None)
        else:
            return
    except _PROBE_ERRORS as exc:
        raise ConfigError(f"{config.where('loss.options')}: {config.loss.name} options: {exc}") from None
    if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
        raise ConfigError(
            f"{config.where('loss.options')}: {config.loss.name} with these options gives a non-finite loss "
            f"({value.item()}) on a random batch: check its options ({config.loss.options})"
        )
