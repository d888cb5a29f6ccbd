"""Hard-negative mining, embedplug's drop-in against sentence-transformers' own function, selection only.

    python benchmarks/mining_against_sentence_transformers.py --queries 20000 --corpus 50000 100000 200000

Both ``mine_hard_negatives`` run on the same (anchor, positive) dataset and extra corpus, with the same
options (``num_negatives=3``, ``relative_margin=0.05``, ``sampling_strategy="top"``, triplets), and with
a stand-in model whose ``encode_query`` / ``encode_document`` return precomputed unit rows, so what is
timed is the search and the filters, not the transformer. sentence-transformers' exact path
(``use_faiss=False``) scores 16,384 queries against the whole corpus per chunk, so its peak memory
grows with the corpus; a size whose chunk would not fit in this machine's memory is skipped and said so.
Each (library, size) runs in its own process, so that its peak resident memory (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

OPTIONS = dict(num_negatives=3, relative_margin=0.05, sampling_strategy="top", output_format="triplet",
               batch_size=4096, use_faiss=False, verbose=False)
# sentence-transformers' default query chunk: its score matrix is this many rows x the corpus.
ST_QUERY_CHUNK = 16384


class PrecomputedModel:
    """The part of a SentenceTransformer that mining reads, with embeddings looked up by text."""

    similarity_fn_name = "cosine"

    def __init__(self, texts: list[str], embeddings: torch.Tensor):
        self.row_of = {text: row for row, text in enumerate(texts)}
        self.embeddings = embeddings
        self.device = torch.device("cpu")
        self.model_card_data = SimpleNamespace(base_model="precomputed")

    def _encode(self, sentences, convert_to_tensor: bool = False, **_unused):
        rows = self.embeddings[[self.row_of[text] for text in sentences]]
        return rows if convert_to_tensor else rows.numpy()

    encode = encode_query = encode_document = _encode

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim

        return cos_sim(torch.as_tensor(a), torch.as_tensor(b))

    def similarity_pairwise(self, a, b):
        from sentence_transformers.util import pairwise_cos_sim

        return pairwise_cos_sim(torch.as_tensor(a), torch.as_tensor(b))


def problem(queries: int, corpus: int, dim: int):
    """Pairs (q_i, p_i) and corpus texts, with random unit embeddings (the same for both libraries)."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    anchors = [f"query {i}" for i in range(queries)]
    documents = [f"document {j}" for j in range(corpus)]  # the positives are the first `queries` documents
    embeddings = torch.randn(queries + corpus, dim, generator=generator)
    # Each positive is its query plus noise (cosine about 0.9), the other documents random: every
    # query keeps negatives under the relative margin, as on real data.
    embeddings[queries : 2 * queries] = embeddings[:queries] + 0.5 * embeddings[queries : 2 * queries]
    embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    dataset = Dataset.from_dict({"anchor": anchors, "positive": documents[:queries]})
    return dataset, documents, PrecomputedModel(anchors + documents, embeddings)


def measure(library: str, queries: int, corpus: int, dim: int) -> dict:
    """One run in this process: seconds and peak resident memory beyond the inputs."""
    dataset, documents, model = problem(queries, corpus, dim)
    import sentence_transformers  # noqa: F401  (imported before the clock: the drop-in reads its version)

    if library == "sentence-transformers":
        from sentence_transformers.util import mine_hard_negatives
        options = OPTIONS
    else:
        from embedplug.mining import mine_hard_negatives

        options = {**OPTIONS, "embedding_cache": False}  # the stand-in model has no weights to key a cache by
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mined = mine_hard_negatives(dataset, model, corpus=documents, **options)
    seconds = time.perf_counter() - start
    extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    digest = hashlib.sha256(json.dumps(mined.to_dict(), sort_keys=True).encode()).hexdigest()
    return {"library": library, "queries": queries, "corpus": corpus, "seconds": seconds,
            "extra_mib": extra_mib, "rows": len(mined), "digest": digest}


def fits_in_memory(queries: int, corpus: int) -> bool:
    """Whether sentence-transformers' chunk score matrix (and its top-k copy) fits in half the free memory."""
    chunk_bytes = min(queries, ST_QUERY_CHUNK) * corpus * 4
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 2 * chunk_bytes < available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--corpus", type=int, nargs="+", default=[50000, 100000, 200000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--one", nargs=3, metavar=("LIBRARY", "QUERIES", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        library, queries, corpus = args.one
        print(json.dumps(measure(library, int(queries), int(corpus), args.dim)))
        return
    print(f"Q = {args.queries} queries, D = {args.dim}, options {OPTIONS}")
    print(f"{'corpus':>8}  {'library':<22} {'seconds':>8} {'extra MiB':>10}  rows")
    for corpus in args.corpus:
        results = {}
        for library in ("embedplug", "sentence-transformers"):
            if library == "sentence-transformers" and not fits_in_memory(args.queries, corpus):
                print(f"{corpus:>8}  {library:<22} skipped: a {min(args.queries, ST_QUERY_CHUNK)} x {corpus} float32 "
                      "score chunk does not fit in half the free memory")
                continue
            command = [sys.executable, __file__, "--dim", str(args.dim), "--one", library, str(args.queries), str(corpus)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results[library] = result
            print(f"{corpus:>8}  {library:<22} {result['seconds']:>8.1f} {result['extra_mib']:>10.0f}  {result['rows']}")
        if len(results) == 2:
            ratio = results["sentence-transformers"]["seconds"] / results["embedplug"]["seconds"]
            same = results["sentence-transformers"]["digest"] == results["embedplug"]["digest"]
            print(f"{corpus:>8}  sentence-transformers / embedplug time: {ratio:.2f}x; identical datasets: {same}")


if __name__ == "__main__":
    main()
