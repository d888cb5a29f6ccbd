"""Drop-in MultipleNegativesRankingLoss (and the cached variant's loss stage): parity with
sentence-transformers 6.2 for every option combination, fused-or-reference routing, constructor contract."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

from embedplug.functional import multiple_negatives_ranking_loss
from embedplug.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_util = pytest.importorskip("sentence_transformers.util")

ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
DIRECTION_SETS = [
    ("query_to_doc", *extra)
    for size in range(4)
    for extra in itertools.combinations(ALL_DIRECTIONS[1:], size)
]


def valid_partitions(directions):
    joint_only = set(directions) & {"query_to_query", "doc_to_doc"}
    return ["joint"] if joint_only else ["joint", "per_direction"]


def parity(columns, **options):
    columns = [column.detach().requires_grad_() for column in columns]
    theirs = st_losses.MultipleNegativesRankingLoss(None, **options)
    ours = MultipleNegativesRankingLoss(None, **options)
    expected = theirs.compute_loss_from_embeddings(columns, None)
    expected_grads = torch.autograd.grad(expected, columns)
    loss = ours.compute_loss_from_embeddings(columns, None)
    grads = torch.autograd.grad(loss, columns)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5 * expected_grad.abs().max().item())
    return ours


@pytest.mark.parametrize("directions", DIRECTION_SETS, ids=lambda d: "+".join(x.replace("_to_", "2") for x in d))
@pytest.mark.parametrize("num_columns", [2, 4])
def test_parity_for_every_direction_and_partition(directions, num_columns):
    generator = torch.Generator().manual_seed(num_columns)
    columns = [torch.randn(40, 16, generator=generator) for _ in range(num_columns)]
    for partition_mode in valid_partitions(directions):
        loss = parity(columns, directions=directions, partition_mode=partition_mode)
        assert loss.runs_fused()


@pytest.mark.parametrize("hardness_mode", ["in_batch_negatives", "hard_negatives", "all_negatives"])
def test_parity_with_hardness_weighting_runs_fused(hardness_mode):
    generator = torch.Generator().manual_seed(1)
    columns = [torch.randn(30, 16, generator=generator) for _ in range(3)]
    loss = parity(columns, hardness_mode=hardness_mode, hardness_strength=5.0, directions=ALL_DIRECTIONS)
    assert loss.runs_fused()
    assert loss.backend_info()["implementation"] == "fused"


def test_parity_with_dot_product_and_custom_similarity():
    generator = torch.Generator().manual_seed(2)
    columns = [torch.randn(300, 16, generator=generator) * 0.3 for _ in range(3)]
    assert parity(columns, similarity_fct=st_util.dot_score, scale=1.0, directions=ALL_DIRECTIONS).runs_fused()

    def manhattan_similarity(x, y):
        return -torch.cdist(x, y, p=1)

    assert not parity(columns, similarity_fct=manhattan_similarity, scale=0.1).runs_fused()


@pytest.mark.parametrize("scale", [1.0, 20.0, 100.0])
@pytest.mark.parametrize("n", [1, 257])
def test_parity_across_scales_and_batch_sizes(scale, n):
    generator = torch.Generator().manual_seed(n)
    columns = [torch.randn(n, 24, generator=generator) for _ in range(3)]
    parity(columns, scale=scale, directions=ALL_DIRECTIONS)


def test_duplicate_rows_are_in_batch_negatives_like_sentence_transformers():
    generator = torch.Generator().manual_seed(3)
    anchor = torch.randn(20, 8, generator=generator)
    positive = anchor.clone()
    positive[10:] = torch.randn(10, 8, generator=generator)
    parity([anchor, positive], directions=ALL_DIRECTIONS)


def test_functional_similarity_names():
    generator = torch.Generator().manual_seed(4)
    anchor, positive = torch.randn(10, 4, generator=generator), torch.randn(10, 4, generator=generator)
    torch.testing.assert_close(
        multiple_negatives_ranking_loss(anchor, positive, similarity="dot", scale=1.0),
        st_losses.MultipleNegativesRankingLoss(None, scale=1.0, similarity_fct=st_util.dot_score)
        .compute_loss_from_embeddings([anchor, positive], None),
    )
    with pytest.raises(ValueError, match="unknown similarity"):
        multiple_negatives_ranking_loss(anchor, positive, similarity="euclid")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"scale": 0.0}, "Scale must be a positive value"),
        ({"directions": ()}, "At least one direction"),
        ({"directions": ("query_to_doc", "sideways")}, "Invalid directions"),
        ({"directions": ("doc_to_query",)}, "'query_to_doc' direction is required"),
        ({"partition_mode": "mixed"}, "partition_mode must be"),
        ({"partition_mode": "per_direction", "directions": ("query_to_doc", "doc_to_doc")}, "per_direction"),
        ({"hardness_mode": "soft"}, "hardness_mode must be one of"),
        ({"hardness_mode": "all_negatives", "hardness_strength": -1.0}, "hardness_strength must be non-negative"),
    ],
)
def test_constructor_errors_match(options, match):
    with pytest.raises(ValueError, match=match):
        st_losses.MultipleNegativesRankingLoss(None, **options)
    with pytest.raises(ValueError, match=match):
        MultipleNegativesRankingLoss(None, **options)


def test_bad_embeddings_get_a_clear_error():
    loss = MultipleNegativesRankingLoss(None)
    with pytest.raises(ValueError, match="at least 2"):
        loss.compute_loss_from_embeddings([torch.randn(4, 3)])
    with pytest.raises(ValueError, match="every column"):
        loss.compute_loss_from_embeddings([torch.randn(4, 3), torch.randn(5, 3)])


@pytest.mark.parametrize(
    "ours_class, theirs_class",
    [
        (MultipleNegativesRankingLoss, "MultipleNegativesRankingLoss"),
        (CachedMultipleNegativesRankingLoss, "CachedMultipleNegativesRankingLoss"),
    ],
)
def test_constructor_attributes_config_and_citation_match(ours_class, theirs_class):
    theirs_class = getattr(st_losses, theirs_class)
    ours_signature = inspect.signature(ours_class.__init__).parameters
    theirs_signature = inspect.signature(theirs_class.__init__).parameters
    # sentence-transformers' parameters in its order; embedplug's own options only after them.
    extras = ["sort_mini_batches_by_length"] if ours_class is CachedMultipleNegativesRankingLoss else []
    assert list(ours_signature) == list(theirs_signature) + extras
    for name, parameter in theirs_signature.items():
        if name not in ("self", "model", "similarity_fct"):
            assert ours_signature[name].default == parameter.default, name
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for options in (
        {},
        {"directions": ALL_DIRECTIONS},
        {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"},
        {"scale": 10.0, "similarity_fct": st_util.dot_score, "hardness_mode": "hard_negatives", "hardness_strength": 5.0},
    ):
        ours, theirs = ours_class(model, **options), theirs_class(model, **options)
        assert ours.get_config_dict() == theirs.get_config_dict()
        assert ours.citation == theirs.citation
        assert ours.temperature == pytest.approx(1.0 / theirs.scale)
        assert ours.similarity_fct is theirs.similarity_fct
        assert ours.model is model


def test_cached_loss_stage_equals_the_uncached_loss():
    generator = torch.Generator().manual_seed(5)
    columns = [torch.randn(24, 8, generator=generator) for _ in range(3)]
    cached = CachedMultipleNegativesRankingLoss(torch.nn.Sequential(torch.nn.Linear(2, 2)), mini_batch_size=5, directions=ALL_DIRECTIONS)
    reps = [[chunk.clone().requires_grad_() for chunk in column.split(5)] for column in columns]
    loss = cached.calculate_loss(reps, with_backward=True)
    assert not loss.requires_grad
    leaves = [column.clone().requires_grad_() for column in columns]
    expected = MultipleNegativesRankingLoss(None, directions=ALL_DIRECTIONS).compute_loss_from_embeddings(leaves)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    for column_reps, leaf in zip(reps, leaves):
        torch.testing.assert_close(torch.cat([rep.grad for rep in column_reps]), leaf.grad)


@pytest.mark.parametrize(
    "similarity_fct, shape",
    [
        (lambda x, y: (x * y).sum(-1), r"\(4,\)"),  # row-wise, as for paired inputs
        (lambda x, y: (x @ y.T)[:, :2], r"\(4, 2\)"),
        (lambda x, y: (x @ y.T).unsqueeze(0), r"\(1, 4, 4\)"),
    ],
    ids=["row-wise", "too few columns", "extra dimension"],
)
@pytest.mark.parametrize("directions", [("query_to_doc",), ("query_to_doc", "doc_to_query")])
def test_a_similarity_fct_with_the_wrong_shape_gets_a_clear_error(similarity_fct, shape, directions):
    loss = MultipleNegativesRankingLoss(None, similarity_fct=similarity_fct, directions=directions)
    with pytest.raises(ValueError, match=rf"similarity function must map \[R, D\] and \[C, D\].*returned shape {shape}"):
        loss.compute_loss_from_embeddings([torch.randn(4, 3), torch.randn(4, 3)])
