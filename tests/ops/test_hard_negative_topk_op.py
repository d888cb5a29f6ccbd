"""embedplug::hard_negative_topk beyond the conformance table: every option combination, tile boundaries
of the CPU kernel (256-query blocks, 1024-column tiles) and the CUDA kernel (16384-column tiles),
thread-count independence, and the errors of the cross-argument checks.

Integer-valued embeddings make every score and threshold exact, so the fused result must equal the
reference's exactly (scores, indices and removal counts), ties and thresholds hit exactly included.
"""

from __future__ import annotations

import pytest
import torch
from _support import requires_cuda, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.ops import force_reference, hard_negative_topk
from embedplug.ops.hard_negative_topk import HARD_NEGATIVE_TOPK
from embedplug.reference.hard_negative_topk import dot_pair_scores

pytestmark = requires_extension


def integer_rows(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-2, 3, (rows, dim), generator=generator).double()


def index_matrix(rows: int, width: int, num_corpus: int, generator: torch.Generator) -> torch.Tensor:
    """Random corpus indices, some -1 padding, repeats allowed (a row listed twice counts once)."""
    indices = torch.randint(0, num_corpus, (rows, width), generator=generator)
    return indices.masked_fill(torch.rand((rows, width), generator=generator) < 0.3, -1)


def both_paths(*args):
    fused = hard_negative_topk(*args)
    with force_reference():
        reference = hard_negative_topk(*args)
    return fused, reference


def assert_identical(fused, reference, *, exact_scores=True):
    scores, indices, removed = fused
    assert torch.equal(indices, reference[1]), (indices != reference[1]).nonzero()[:5]
    if exact_scores:
        assert torch.equal(scores, reference[0])
    else:  # two GEMM blockings: the same selection, scores a rounding apart
        torch.testing.assert_close(scores, reference[0], rtol=1e-12, atol=1e-14)
    assert removed.tolist() == reference[2].tolist()


@st.composite
def problems(draw):
    num_queries = draw(st.integers(1, 6))
    num_corpus = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 10_000))
    generator = torch.Generator().manual_seed(seed)
    queries, corpus = integer_rows(num_queries, 3, generator), integer_rows(num_corpus, 3, generator)
    positives = index_matrix(num_queries, draw(st.integers(0, 3)), num_corpus, generator)
    excluded = index_matrix(num_queries, draw(st.integers(0, 2)), num_corpus, generator)
    if draw(st.booleans()):
        positive_scores = dot_pair_scores(queries, corpus, positives)
    else:
        positive_scores = torch.randint(-4, 9, positives.shape, generator=generator).double()
    margin = st.one_of(st.none(), st.sampled_from([0.0, 0.25, 1.0, 2.0, -1.0]))
    threshold = st.one_of(st.none(), st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0]))
    range_min = draw(st.integers(0, 4))
    range_max = draw(st.one_of(st.none(), st.integers(range_min + 1, range_min + 8)))
    k = draw(st.integers(1, 12 if range_max is None else range_max - range_min))
    reserved_slots = draw(st.one_of(st.none(), st.integers(0, 3)))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    return (
        queries.to(dtype), corpus.to(dtype), k, positives, positive_scores.to(dtype), excluded, draw(st.booleans()),
        draw(margin), draw(margin), draw(threshold), draw(threshold), range_min, range_max, reserved_slots,
    )


@settings(max_examples=300, deadline=None)
@given(problems())
def test_fused_equals_the_reference_for_every_option_combination(args):
    assert_identical(*both_paths(*args))


@pytest.mark.parametrize(("num_queries", "num_corpus"), [(1, 1025), (255, 1024), (256, 1), (257, 1023), (300, 4500)])
@pytest.mark.parametrize("window", [False, True])
def test_fused_equals_the_reference_across_tile_boundaries(num_queries, num_corpus, window):
    generator = torch.Generator().manual_seed(num_queries * 7 + num_corpus)
    queries, corpus = integer_rows(num_queries, 5, generator), integer_rows(num_corpus, 5, generator)
    positives = index_matrix(num_queries, 3, num_corpus, generator)
    positive_scores = torch.randint(4, 10, positives.shape, generator=generator).double()
    excluded = index_matrix(num_queries, 2, num_corpus, generator)
    if window:  # the window holds the best raw rows: filters mild enough to leave some of them
        positive_scores += 6
        args = (queries, corpus, 6, positives, positive_scores, excluded, True, 1.0, None, None, -6.0, 2, 25, None)
    else:
        args = (queries, corpus, 6, positives, positive_scores, excluded, True, 1.0, 0.25, 9.0, -6.0, 2, None, None)
    fused, reference = both_paths(*args)
    assert_identical(fused, reference)
    if num_queries > 100 and num_corpus > 100:  # the case is not degenerate: rules fire and candidates survive
        assert fused[2].sum() > 0 and (fused[1] >= 0).any()


@pytest.mark.parametrize("window", [False, True])
def test_fused_equals_the_reference_on_random_float64_data(window):
    """Continuous scores: a different GEMM blocking moves a score by ~1e-16, which decides nothing here."""
    generator = torch.Generator().manual_seed(3)
    unit = torch.nn.functional.normalize
    queries = unit(torch.randn(200, 24, generator=generator, dtype=torch.float64), dim=1)
    corpus = unit(torch.randn(5000, 24, generator=generator, dtype=torch.float64), dim=1)
    positives = index_matrix(200, 2, 5000, generator)
    positive_scores = 0.4 + 0.4 * torch.rand(positives.shape, generator=generator, dtype=torch.float64)
    excluded = index_matrix(200, 3, 5000, generator)
    if window:  # the window holds the best raw rows: filters mild enough to leave some of them
        args = (queries, corpus, 10, positives, positive_scores + 0.3, excluded, True, 0.05, 0.1, 0.7, None, 3, 40, 2)
    else:
        args = (queries, corpus, 10, positives, positive_scores, excluded, True, 0.05, 0.1, 0.45, -0.3, 3, None, 2)
    fused, reference = both_paths(*args)
    assert_identical(fused, reference, exact_scores=False)
    assert fused[2][2:].sum() > 0 and (fused[1] >= 0).float().mean() > 0.2  # not degenerate


def test_the_result_does_not_depend_on_the_thread_count():
    generator = torch.Generator().manual_seed(8)
    queries, corpus = integer_rows(700, 4, generator), integer_rows(3000, 4, generator)
    positives = index_matrix(700, 2, 3000, generator)
    args = (queries, corpus, 5, positives, dot_pair_scores(queries, corpus, positives), positives[:, :0], True,
            None, None, 7.0, None, 0, None, None)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = hard_negative_topk(*args)
        torch.set_num_threads(2)
        several = hard_negative_topk(*args)
    finally:
        torch.set_num_threads(previous)
    assert_identical(several, single)


def _valid_args():
    generator = torch.Generator().manual_seed(1)
    queries, corpus = integer_rows(4, 3, generator), integer_rows(10, 3, generator)
    positives = torch.tensor([[0], [1], [2], [-1]])
    return [queries, corpus, 2, positives, torch.zeros(4, 1, dtype=torch.float64), torch.empty(4, 0, dtype=torch.long),
            True, None, None, None, None, 0, None, None]


@pytest.mark.parametrize(
    ("position", "value", "error", "message"),
    [
        (3, torch.tensor([[0], [1], [10], [-1]]), IndexError, "positives holds corpus indices outside 0..9"),
        (5, torch.tensor([[-2], [1], [2], [3]]), IndexError, "excluded holds corpus indices outside 0..9"),
        (3, torch.tensor([[0], [1], [2]]), ValueError, "positives must have one row per query"),
        (4, torch.zeros(4, 2, dtype=torch.float64), ValueError, "positive_scores must match positives' shape"),
        (3, torch.zeros(4, 1), TypeError, "positives must be an integer tensor"),
        (2, 0, ValueError, "k must be an integer >= 1"),
        (12, 0, ValueError, "range_max must be an integer >= 1"),
    ],
)
@pytest.mark.parametrize("reference", [False, True])
def test_bad_arguments_are_refused_on_both_paths(position, value, error, message, reference):
    args = _valid_args()
    args[position] = value
    with force_reference() if reference else _no_context():
        with pytest.raises(error, match=message):
            hard_negative_topk(*args)


@pytest.mark.parametrize("reference", [False, True])
def test_the_rank_window_must_hold_k(reference):
    args = _valid_args()
    args[11], args[12] = 3, 4  # range_min, range_max: one rank, k = 2
    with force_reference() if reference else _no_context():
        with pytest.raises(ValueError, match="k=2 does not fit the rank window"):
            hard_negative_topk(*args)
        args[11] = 4
        with pytest.raises(ValueError, match="range_min must be smaller than range_max"):
            hard_negative_topk(*args)


class _no_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a device; scripts/gpu-check.sh runs them on a GPU machine).


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_equals_the_cpu_kernel_on_every_conformance_sample(dtype):
    """The integer samples are exact in any GEMM, so the CUDA kernel must agree bit for bit."""
    for sample in HARD_NEGATIVE_TOPK.samples(dtype):
        if sample.regime.startswith("random"):
            continue
        cpu = hard_negative_topk(*sample.args)
        gpu = hard_negative_topk(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in sample.args])
        assert_identical(tuple(t.cpu() for t in gpu), cpu)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("window", [False, True])
def test_cuda_equals_the_cpu_kernel_across_its_tiles(window):
    generator = torch.Generator().manual_seed(5)
    queries, corpus = integer_rows(300, 6, generator), integer_rows(16384 + 700, 6, generator)
    positives = index_matrix(300, 3, corpus.shape[0], generator)
    positive_scores = torch.randint(6, 12, positives.shape, generator=generator).double()
    excluded = index_matrix(300, 2, corpus.shape[0], generator)
    args = [queries, corpus, 8, positives, positive_scores, excluded, True, 1.0, 0.25, 11.0, -8.0, 1,
            60 if window else None, None]
    cpu = hard_negative_topk(*args)
    gpu = hard_negative_topk(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    assert_identical(tuple(t.cpu() for t in gpu), cpu)
