"""gather_across_devices on every in-batch loss, in 2 gloo processes on 127.0.0.1 (CPU).

One spawn runs every case (gathered_cases.CASES) in both ranks; each rank's loss and the gradients
that reach its own rows are compared here with one process on the concatenated batch:

- the ranks' losses average to the single-process loss (labelled losses: every rank returns it);
- the gradient on rank r's rows is world_size times the single-process gradient of those rows (the
  all-gather sums the ranks' gradients onto a row; DDP then divides parameter gradients by
  world_size), so DDP yields the single-process parameter gradient;
- cached losses: the ranks' parameter gradients average to the single-process ones;
- GIST with its anchor-anchor block matches sentence-transformers' gathered loss in the same ranks.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import gathered_cases
from gathered_cases import CACHED_CASES, CASES, WORLD_SIZE, cached_result, embedding_result

SPAWN_DEADLINE_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """[rank 0 results, rank 1 results] of gathered_cases.worker."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = tmp_path_factory.mktemp("gathered")
    context = mp.start_processes(
        gathered_cases.worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-process run did not finish in {SPAWN_DEADLINE_S} s")
    results = [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
    for rank, result in enumerate(results):
        assert "__traceback__" not in result, f"rank {rank} failed:\n{result['__traceback__']}"
    return results


def _tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


def test_gathered_columns_are_grouped_per_column_and_match_the_layout_map(ranks):
    sizes = (2, 3)
    # Column by column (all positives, then all first negatives...), never interleaved per rank.
    expected = torch.tensor([100.0 * c + 10 * r + i for c in range(3) for r in range(2) for i in range(sizes[r])])
    for rank, result in enumerate(ranks):
        layout = result["__layout__"]
        torch.testing.assert_close(layout["flat"], expected)
        for (column, owner, row), index in layout["map"].items():
            assert layout["flat"][index] == 100 * column + 10 * owner + row
        first = layout["local_first"][: sizes[rank]]
        torch.testing.assert_close(first, torch.tensor([10.0 * rank + i for i in range(sizes[rank])]))
        assert layout["local_indices"].tolist() == [2 * 5 + sum(sizes[:rank]) + i for i in range(sizes[rank])]


def test_bad_input_on_one_rank_raises_on_every_rank(ranks):
    assert "embeddings must be 2-D" in ranks[0]["__bad_input__"]
    assert "rank(s) [0] rejected their input" in ranks[1]["__bad_input__"]


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.raises is None])
def test_gathered_loss_and_gradients_match_one_process(ranks, name):
    case = CASES[name]
    tolerance = _tolerance(case.dtype)
    columns, labels = case.inputs()
    if case.expect == "st":
        for rank, result in enumerate(ranks):
            torch.testing.assert_close(result[name]["loss"], result[name]["st_loss"], **tolerance)
            for grad, st_grad in zip(result[name]["grads"], result[name]["st_grads"]):
                torch.testing.assert_close(grad, st_grad, **tolerance)
        return
    single = embedding_result(case, columns, labels, gather=False)
    losses = torch.stack([result[name]["loss"] for result in ranks])
    if case.whole_batch_value:
        for loss in losses:
            torch.testing.assert_close(loss, single["loss"], **tolerance)
    torch.testing.assert_close(losses.mean(), single["loss"], **tolerance)
    for rank, result in enumerate(ranks):
        for column, (grad, expected) in enumerate(zip(result[name]["grads"], single["grads"])):
            scaled = WORLD_SIZE * expected[case.rows(rank)]
            atol = max(tolerance["atol"], tolerance["rtol"] * scaled.abs().max().item())
            torch.testing.assert_close(grad, scaled, rtol=tolerance["rtol"], atol=atol, msg=f"rank {rank} column {column}")


def test_gathered_mnrl_stays_fused_where_one_process_is_fused(ranks):
    fused = ["mnrl_pairs", "mnrl_triplets", "mnrl_two_negatives_dot", "mnrl_float64", "mnrl_all_directions"]
    fused += ["mnrl_all_directions_two_negatives_dot_float64", "mnrl_query_to_query"]
    for name in fused:
        assert all(result[name]["fused"] for result in ranks), name
    # Hardness weighting runs on the reference in one process too.
    assert not any(result["mnrl_hardness"]["fused"] for result in ranks)


def test_unequal_batch_sizes_fail_clearly_where_unsupported(ranks):
    for result in ranks:
        assert "error" in result["gist_unequal_sizes"]
        assert CASES["gist_unequal_sizes"].raises in result["gist_unequal_sizes"]["error"]


@pytest.mark.parametrize("name", list(CACHED_CASES))
def test_cached_losses_with_mini_batches_match_one_process(ranks, name):
    case = CACHED_CASES[name]
    tolerance = _tolerance(case.dtype)
    columns, _ = case.inputs()
    single = cached_result(case, columns, gather=False)
    torch.testing.assert_close(torch.stack([r[name]["loss"] for r in ranks]).mean(), single["loss"], **tolerance)
    for index, expected in enumerate(single["param_grads"]):
        # DDP's average of the ranks' parameter gradients.
        averaged = torch.stack([r[name]["param_grads"][index] for r in ranks]).mean(0)
        atol = max(tolerance["atol"], tolerance["rtol"] * expected.abs().max().item())
        torch.testing.assert_close(averaged, expected, rtol=tolerance["rtol"], atol=atol)
