"""embedplug::hardest_off_diagonal_similarity: fused kernel vs the reference and torch.max, edges, opcheck."""

from __future__ import annotations

import pytest
import torch
from _support import requires_cuda, requires_extension

from embedplug.ops import hardest_off_diagonal_similarity
from embedplug.reference.hardest_negative import hardest_off_diagonal_similarity as reference

fused_op = getattr(torch.ops.embedplug, "hardest_off_diagonal_similarity", None)


def torch_max_semantics(anchors, candidates):
    """sentence-transformers' own mining: the diagonal set to -inf, then torch.max over each row."""
    scores = anchors @ candidates.T
    n = anchors.shape[0]
    scores[torch.arange(n), torch.arange(n)] = -torch.inf
    return scores.max(1)


@requires_extension
@pytest.mark.parametrize("n, m", [(1, 1), (2, 2), (7, 7), (63, 63), (64, 64), (65, 65), (300, 300), (5, 9), (9, 5), (1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference_and_torch_max(n, m, dtype):
    generator = torch.Generator().manual_seed(n * 100 + m)
    anchors = torch.randn(n, 12, generator=generator, dtype=dtype)
    candidates = torch.randn(m, 12, generator=generator, dtype=dtype)
    values, indices = fused_op(anchors, candidates)
    expected_values, expected_indices = reference(anchors, candidates)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(values, expected_values, rtol=1e-6, atol=1e-6)
    if n == m and n > 1:
        st_values, st_indices = torch_max_semantics(anchors, candidates)
        assert torch.equal(indices, st_indices)
        torch.testing.assert_close(values, st_values, rtol=1e-6, atol=1e-6)


@requires_extension
def test_ties_go_to_the_first_column_across_tiles():
    # Identical candidates: every off-diagonal similarity of a row ties; 3000 columns span two tiles.
    # Small integers: every dot product is exact, so the ties are exact whatever the GEMM's order.
    anchors = torch.randint(-3, 4, (70, 8), generator=torch.Generator().manual_seed(1)).float()
    candidates = torch.ones(3000, 8)
    _, indices = fused_op(anchors, candidates)
    expected = torch.zeros(70, dtype=torch.long)
    expected[0] = 1  # row 0's first column is its own positive
    assert torch.equal(indices, expected)
    assert torch.equal(indices[:2], torch_max_semantics(anchors[:2], candidates[:2])[1])


@requires_extension
def test_non_finite_rows_follow_torch_max():
    anchors = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    candidates = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    candidates[4, 0] = float("nan")  # every row but row 4 sees a NaN at column 4
    candidates[2] = float("inf")
    anchors[5] = 0.0  # all similarities 0: ties
    values, indices = fused_op(anchors, candidates)
    st_values, st_indices = torch_max_semantics(anchors, candidates)
    assert torch.equal(indices, st_indices)
    torch.testing.assert_close(values, st_values, equal_nan=True)
    assert torch.equal(indices, reference(anchors, candidates)[1])


@requires_extension
def test_no_negative_and_empty_inputs():
    values, indices = fused_op(torch.ones(1, 3), torch.ones(1, 3))
    assert indices.tolist() == [-1] and values.item() == float("-inf")
    values, indices = fused_op(torch.ones(2, 3), torch.ones(0, 3))
    assert indices.tolist() == [-1, -1]
    assert fused_op(torch.ones(0, 3), torch.ones(4, 3))[1].shape == (0,)
    # All candidates -inf apart from the diagonal: the index still names a negative, never the positive.
    anchors = torch.tensor([[1.0], [1.0], [1.0]])
    candidates = torch.tensor([[-float("inf")], [-float("inf")], [-float("inf")]])
    assert fused_op(anchors, candidates)[1].tolist() == reference(anchors, candidates)[1].tolist() == [1, 0, 0]


def test_python_front_checks_and_upcasts():
    anchors = torch.randn(5, 4)
    with pytest.raises(ValueError, match="anchors must be 2-D"):
        hardest_off_diagonal_similarity(anchors[0], anchors)
    with pytest.raises(ValueError, match="candidates and anchors must have the same number of features, got 3 and 4"):
        hardest_off_diagonal_similarity(anchors, anchors[:, :3])
    with pytest.raises(TypeError, match="candidates must be a floating-point tensor"):
        hardest_off_diagonal_similarity(anchors, anchors.long())
    values, indices = hardest_off_diagonal_similarity(anchors.half(), anchors.half().t().contiguous().t())
    assert values.dtype == torch.float32
    assert torch.equal(indices, reference(anchors.half().float(), anchors.half().float())[1])
    # Non-contiguous input.
    wide = torch.randn(5, 8)
    assert torch.equal(hardest_off_diagonal_similarity(wide[:, ::2], wide[:, 1::2])[1],
                       reference(wide[:, ::2].contiguous(), wide[:, 1::2].contiguous())[1])


@requires_extension
def test_opcheck():
    generator = torch.Generator().manual_seed(4)
    anchors = torch.randn(40, 8, generator=generator)
    candidates = torch.randn(40, 8, generator=generator)
    torch.library.opcheck(fused_op.default, (anchors, candidates))
    torch.library.opcheck(fused_op.default, (anchors.double()[:1], candidates.double()[:1]))


@requires_extension
def test_compiles():
    torch._dynamo.reset()
    compiled = torch.compile(hardest_off_diagonal_similarity, fullgraph=True, backend="aot_eager")
    anchors, candidates = torch.randn(30, 8), torch.randn(30, 8)
    assert torch.equal(compiled(anchors, candidates)[1], hardest_off_diagonal_similarity(anchors, candidates)[1])


@requires_cuda
@requires_extension
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(7)
    anchors, candidates = torch.randn(700, 32, generator=generator), torch.randn(700, 32, generator=generator)
    candidates[10:20] = candidates[5]  # ties
    anchors[3, 0] = float("nan")
    values, indices = hardest_off_diagonal_similarity(anchors.cuda(), candidates.cuda())
    expected, expected_indices = hardest_off_diagonal_similarity(anchors, candidates)
    assert torch.equal(indices.cpu(), expected_indices)
    torch.testing.assert_close(values.cpu(), expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    values, indices = hardest_off_diagonal_similarity(anchors[:1].cuda(), candidates[:1].cuda())
    assert indices.tolist() == [-1]
