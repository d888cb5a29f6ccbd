"""The gathered-loss cases the 2-process test runs: inputs, the gathered computation each rank does,
and the single-process expectation. Importable by the spawned ranks (no pytest here)."""

from __future__ import annotations

import datetime
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch import nn

WORLD_SIZE = 2


@dataclass
class Case:
    """One loss configuration: ``columns`` global [N, D] inputs split over the ranks by ``sizes``;
    ``make_loss(gather)`` builds the loss; labelled cases carry labels."""

    name: str
    make_loss: Callable[[bool], nn.Module]
    columns: int
    sizes: tuple[int, int] = (6, 6)
    dim: int = 8
    dtype: torch.dtype = torch.float32
    labelled: bool = False
    # "single": ranks must reproduce one process on the concatenated batch; "st": they must
    # reproduce sentence-transformers' own gathered loss in the same processes (``st_loss``).
    expect: str = "single"
    st_loss: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    # Each rank returns the whole batch's loss (labelled losses) instead of its share.
    whole_batch_value: bool = False
    raises: str | None = None
    seed: int = 0
    # Labels as float values (classes by equality, as sentence-transformers compares them).
    float_labels: bool = False
    extra: dict = field(default_factory=dict)

    def inputs(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        generator = torch.Generator().manual_seed(self.seed)
        total = sum(self.sizes)
        columns = [torch.randn(total, self.dim, generator=generator, dtype=self.dtype) for _ in range(self.columns)]
        if self.columns >= 2:
            # Positives near their anchors, so the losses are not all at log(N).
            columns[1] = columns[0] + 0.8 * columns[1]
        labels = torch.randint(0, max(total // 3, 2), (total,), generator=generator) if self.labelled else None
        if labels is not None and self.float_labels:
            labels = labels.double() * 0.5 + 0.25  # 0.25, 0.75, ...: no rank may number them on its own
        return columns, labels

    def rows(self, rank: int) -> slice:
        start = sum(self.sizes[:rank])
        return slice(start, start + self.sizes[rank])


def st_gist_gathered(columns: list[torch.Tensor], **options) -> torch.Tensor:
    """sentence-transformers' GISTEmbedLoss.forward with gather_across_devices=True on given columns
    (self-guided: the guide's embeddings are the student's, detached)."""
    from sentence_transformers.sentence_transformer.losses import gist_embed as st_gist_module

    loss = st_gist_module.GISTEmbedLoss.__new__(st_gist_module.GISTEmbedLoss)
    nn.Module.__init__(loss)
    settings = dict(temperature=0.05, margin_strategy="absolute", margin=0.0, contrast_anchors=True, contrast_positives=True)
    settings.update(options)
    for name, value in settings.items():
        setattr(loss, name, value)
    loss.similarity_fct = nn.CosineSimilarity(dim=-1)
    loss.cross_entropy_loss = nn.CrossEntropyLoss()
    loss.gather_across_devices = True
    loss.must_retokenize = False
    student, guide = object(), object()
    loss.__dict__.update(model=student, guide=guide)
    guide_columns = [column.detach() for column in columns]
    with mock.patch.object(
        st_gist_module, "embed_columns", lambda model, _: list(columns if model is student else guide_columns)
    ):
        return loss.forward([{}] * len(columns), None)


class TinyEncoder(nn.Module):
    """A linear 'sentence embedder' over a float feature ``input_values`` (a GradCache-able model)."""

    def __init__(self, in_dim: int, out_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, dtype=dtype)

    def forward(self, features: dict) -> dict:
        return {**features, "sentence_embedding": torch.tanh(self.linear(features["input_values"]))}


def tiny_model(dtype: torch.dtype, dim: int = 8) -> nn.Sequential:
    torch.manual_seed(1234)
    return nn.Sequential(TinyEncoder(dim, 6, dtype))


def lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0):
    """The example plugin's LiftedStructureLoss rule: a positive pair's log-sum-exp also runs over the
    negatives of the positive, which may live on the other rank."""
    from _support import example_lifted_structure

    return example_lifted_structure()(neg_margin, pos_margin)


def _rule_loss_classes() -> list[tuple[str, type, dict]]:
    """Losses a plugin would make with ``make_loss_class``: from a rule factory (hyper-parameters
    become constructor arguments) and from a fixed rule."""
    from embedplug.losses import make_loss_class
    from embedplug.pair_rules import presets

    return [
        ("rule_lifted_structure", make_loss_class(lifted_structure, name="RuleLiftedStructureLoss"), {"neg_margin": 0.8}),
        ("rule_supcon", make_loss_class(presets.supcon, name="RuleSupConLoss"), {"temperature": 0.2}),
        ("rule_circle", make_loss_class(presets.circle(), name="RuleCircleLoss"), {}),
        # MultiSimilarityMiner's filter: a pair is kept by the anchor's hardest pair over the whole batch.
        ("rule_multi_similarity_mined", make_loss_class(presets.multi_similarity(), name="RuleMultiSimilarityLoss"), {}),
    ]


def _cases() -> list[Case]:
    from sentence_transformers import util

    import embedplug.losses as L

    cases = [
        Case("mnrl_pairs", lambda g: L.MultipleNegativesRankingLoss(None, gather_across_devices=g), columns=2),
        Case("mnrl_triplets", lambda g: L.MultipleNegativesRankingLoss(None, scale=10.0, gather_across_devices=g), columns=3),
        Case(
            "mnrl_two_negatives_dot",
            lambda g: L.MultipleNegativesRankingLoss(None, scale=0.5, similarity_fct=util.dot_score, gather_across_devices=g),
            columns=4,
        ),
        Case(
            "mnrl_all_directions",
            lambda g: L.MultipleNegativesRankingLoss(
                None, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), gather_across_devices=g
            ),
            columns=3,
        ),
        Case(
            "mnrl_all_directions_two_negatives_dot_float64",
            lambda g: L.MultipleNegativesRankingLoss(
                None, scale=0.5, similarity_fct=util.dot_score,
                directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), gather_across_devices=g,
            ),
            columns=4,
            dtype=torch.float64,
        ),
        Case(
            "mnrl_query_to_query",
            lambda g: L.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "query_to_query"), gather_across_devices=g),
            columns=2,
        ),
        Case(
            "mnrl_doc_directions_unequal_sizes",
            lambda g: L.MultipleNegativesRankingLoss(
                None, directions=("query_to_doc", "doc_to_query", "doc_to_doc"), gather_across_devices=g
            ),
            columns=3,
            sizes=(4, 7),
        ),
        Case(
            "mnrl_hardness",
            lambda g: L.MultipleNegativesRankingLoss(
                None, hardness_mode="all_negatives", hardness_strength=2.0, gather_across_devices=g
            ),
            columns=3,
        ),
        Case("mnrl_unequal_sizes", lambda g: L.MultipleNegativesRankingLoss(None, gather_across_devices=g), columns=3, sizes=(5, 8)),
        Case(
            "mnrl_float64",
            lambda g: L.MultipleNegativesRankingLoss(None, gather_across_devices=g),
            columns=3,
            dtype=torch.float64,
        ),
        Case(
            "gist_no_anchor_block",
            lambda g: L.GISTEmbedLoss(None, None, temperature=0.05, contrast_anchors=False, gather_across_devices=g),
            columns=3,
        ),
        Case(
            "gist_like_sentence_transformers",
            lambda g: L.GISTEmbedLoss(None, None, temperature=0.05, margin=0.05, gather_across_devices=g),
            columns=3,
            expect="st",
            st_loss=lambda columns: st_gist_gathered(columns, margin=0.05),
        ),
        Case(
            "gist_like_sentence_transformers_float64",
            lambda g: L.GISTEmbedLoss(None, None, temperature=0.05, gather_across_devices=g),
            columns=2,
            dtype=torch.float64,
            expect="st",
            st_loss=lambda columns: st_gist_gathered(columns),
        ),
        Case(
            # A negative margin keeps the self similarities in the guide's filter: 6.2 and 6.3 differ.
            "gist_negative_margin_like_sentence_transformers",
            lambda g: L.GISTEmbedLoss(None, None, temperature=0.05, margin=-0.3, gather_across_devices=g),
            columns=2,
            expect="st",
            st_loss=lambda columns: st_gist_gathered(columns, margin=-0.3),
        ),
        Case(
            "gist_unequal_sizes",
            lambda g: L.GISTEmbedLoss(None, None, gather_across_devices=g),
            columns=2,
            sizes=(5, 7),
            raises="rank 0: 5, rank 1: 7",
        ),
    ]
    for name, loss_class, options in [
        ("batch_hard", L.BatchHardTripletLoss, {"margin": 1.0}),
        ("batch_hard_soft_margin", L.BatchHardSoftMarginTripletLoss, {}),
        ("batch_semi_hard", L.BatchSemiHardTripletLoss, {"margin": 1.0}),
        ("batch_all", L.BatchAllTripletLoss, {"margin": 2.0}),
        ("pml_contrastive", L.PMLContrastiveLoss, {"pos_margin": 0.1}),
        ("pml_ntxent", L.PMLNTXentLoss, {"temperature": 0.1}),
        ("pml_generalized_lifted", L.PMLGeneralizedLiftedStructureLoss, {}),
        ("pml_tuplet_margin", L.PMLTupletMarginLoss, {}),
        *_rule_loss_classes(),
    ]:
        for sizes, dtype in [((8, 8), torch.float32), ((7, 10), torch.float32), ((8, 8), torch.float64)]:
            suffix = f"{sizes[0]}_{sizes[1]}_{str(dtype)[6:]}"
            cases.append(
                Case(
                    f"{name}_{suffix}",
                    lambda g, loss_class=loss_class, options=options: loss_class(None, gather_across_devices=g, **options),
                    columns=1,
                    sizes=sizes,
                    dtype=dtype,
                    labelled=True,
                    whole_batch_value=True,
                )
            )
    cases.append(
        Case(
            "batch_hard_float_labels",
            lambda g: L.BatchHardTripletLoss(None, margin=1.0, gather_across_devices=g),
            columns=1,
            sizes=(8, 8),
            labelled=True,
            whole_batch_value=True,
            float_labels=True,
        )
    )
    return cases


def _cached_cases() -> list[Case]:
    import embedplug.losses as L

    return [
        Case(
            "cached_mnrl_mini_batches",
            lambda g, model=None: L.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4, gather_across_devices=g),
            columns=3,
            sizes=(6, 6),
        ),
        Case(
            "cached_mnrl_mini_batches_float64",
            lambda g, model=None: L.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4, gather_across_devices=g),
            columns=2,
            sizes=(6, 6),
            dtype=torch.float64,
        ),
        Case(
            "cached_gist_mini_batches",
            lambda g, model=None: L.CachedGISTEmbedLoss(
                model, None, temperature=0.05, mini_batch_size=4, contrast_anchors=False, gather_across_devices=g
            ),
            columns=3,
            sizes=(6, 6),
        ),
    ]


CASES = {case.name: case for case in _cases()}
CACHED_CASES = {case.name: case for case in _cached_cases()}


def embedding_result(case: Case, columns: list[torch.Tensor], labels: torch.Tensor | None, gather: bool) -> dict:
    """Loss and the gradient of every column of one (local or global) batch."""
    leaves = [column.clone().requires_grad_() for column in columns]
    loss_module = case.make_loss(gather)
    loss = loss_module.compute_loss_from_embeddings(leaves, labels)
    loss.backward()
    result = {"loss": loss.detach(), "grads": [leaf.grad for leaf in leaves]}
    if hasattr(loss_module, "runs_fused") and gather:
        result["fused"] = loss_module.runs_fused()
    if case.st_loss is not None and gather:
        st_leaves = [column.clone().requires_grad_() for column in columns]
        st_loss = case.st_loss(st_leaves)
        st_loss.backward()
        result["st_loss"] = st_loss.detach()
        result["st_grads"] = [leaf.grad for leaf in st_leaves]
    return result


def cached_result(case: Case, columns: list[torch.Tensor], gather: bool) -> dict:
    """Loss and the model's parameter gradients of a cached loss on one (local or global) batch."""
    model = tiny_model(case.dtype, case.dim)
    loss = case.make_loss(gather, model)([{"input_values": column} for column in columns], None)
    loss.backward()
    return {"loss": loss.detach(), "param_grads": [p.grad.clone() for p in model.parameters()]}


def _layout_check(rank: int) -> dict:
    """The gathered columns of ranks with 2 and 3 rows, and the layout's own map."""
    from embedplug.distributed import gather_columns

    sizes = (2, 3)
    # Entry = 100 * column + 10 * rank + row: a gathered tensor shows where every row went.
    local = [torch.tensor([[100.0 * c + 10 * rank + i] for i in range(sizes[rank])]) for c in range(3)]
    gathered, layout = gather_columns(local, "layout_check")
    flat = torch.cat(gathered).flatten()
    mapped = {
        (c, r, i): layout.column_index(c, r, i) for c in range(3) for r in range(2) for i in range(sizes[r])
    }
    return {
        "flat": flat,
        "map": mapped,
        "local_first": layout.local_first(gathered[0]).flatten(),
        "local_indices": layout.local_indices(2),
    }


def _bad_input_check(rank: int) -> str:
    """Rank 0 passes 1-D embeddings: every rank must raise, none may wait in a collective."""
    import embedplug.losses as L

    loss = L.BatchHardTripletLoss(None, gather_across_devices=True)
    embeddings = torch.randn(4) if rank == 0 else torch.randn(4, 3)
    try:
        loss.compute_loss_from_embeddings([embeddings], torch.arange(4))
    except ValueError as error:
        return str(error)
    return "no error"


def worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: every case gathered, results saved to ``out_dir/rank{rank}.pt``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict = {}
    try:
        results["__layout__"] = _layout_check(rank)
        results["__bad_input__"] = _bad_input_check(rank)
        for name, case in CASES.items():
            if os.environ.get("EMBEDPLUG_GATHER_TRACE"):
                print(f"rank {rank}: {name}", flush=True)
            columns, labels = case.inputs()
            local = [column[case.rows(rank)] for column in columns]
            local_labels = None if labels is None else labels[case.rows(rank)]
            try:
                results[name] = embedding_result(case, local, local_labels, gather=True)
            except ValueError as error:
                results[name] = {"error": str(error)}
        for name, case in CACHED_CASES.items():
            columns, _ = case.inputs()
            results[name] = cached_result(case, [column[case.rows(rank)] for column in columns], gather=True)
    except Exception:  # noqa: BLE001 - the test reports the rank's traceback
        results["__traceback__"] = traceback.format_exc()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
