"""Near ties decided as sentence-transformers decides them.

Corpus rows that differ only in their last bits score within a few float32 roundings of each other, so
their order (and their side of a margin) is whatever the similarity GEMM's rounding says. BLAS rounds an
entry differently in differently shaped products; sentence-transformers scores a query chunk against the
whole corpus in one product, so the drop-in must compute that same product wherever it fits in memory,
or it orders such rows differently. The model is a stand-in that returns precomputed embeddings: the
search is what is compared, not the transformer.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

datasets = pytest.importorskip("datasets")
st_util = pytest.importorskip("sentence_transformers.util")

from embedplug.mining import mine_hard_negatives  # noqa: E402


class PrecomputedModel:
    """The part of a SentenceTransformer that mining reads, with embeddings looked up by text."""

    similarity_fn_name = "cosine"

    def __init__(self, texts, embeddings):
        self.row_of = {text: row for row, text in enumerate(texts)}
        self.embeddings = embeddings
        self.device = torch.device("cpu")
        self.model_card_data = SimpleNamespace(base_model="precomputed")

    def _encode(self, sentences, convert_to_tensor=False, **_unused):
        rows = self.embeddings[[self.row_of[text] for text in sentences]]
        return rows if convert_to_tensor else rows.numpy()

    encode = encode_query = encode_document = _encode

    def similarity(self, a, b):
        return st_util.cos_sim(torch.as_tensor(a), torch.as_tensor(b))

    def similarity_pairwise(self, a, b):
        return st_util.pairwise_cos_sim(torch.as_tensor(a), torch.as_tensor(b))


def near_tie_problem(queries: int, documents: int, dim: int = 384, seed: int = 0):
    """Pairs (query i, document i), each positive close to its query; the other documents come in
    groups of 4 copies of one random row, each copy perturbed in its last bits, so that their scores
    against a query lie a few roundings apart (or round to one value: an exact tie)."""
    generator = torch.Generator().manual_seed(seed)
    query_rows = torch.randn(queries, dim, generator=generator)
    positives = query_rows + 0.5 * torch.randn(queries, dim, generator=generator)
    bases = torch.randn((documents - queries + 3) // 4, dim, generator=generator).repeat_interleave(4, dim=0)
    others = bases[: documents - queries] * (1 + 1e-6 * torch.randn(documents - queries, dim, generator=generator))
    embeddings = torch.nn.functional.normalize(torch.cat([query_rows, positives, others]), dim=1)
    anchors = [f"query {i}" for i in range(queries)]
    corpus = [f"document {j}" for j in range(documents)]
    dataset = datasets.Dataset.from_dict({"anchor": anchors, "positive": corpus[:queries]})
    return dataset, corpus, PrecomputedModel(anchors + corpus, embeddings)


def differing_beyond_exact_ties(mined: list[dict], expected: list[dict], model, num_negatives: int) -> list[int]:
    """Rows that differ other than by exchanging negatives of exactly equal score. embedplug breaks an
    exact tie by the lower corpus index, sentence-transformers by whatever order torch.topk leaves, so
    where a tie straddles the cut they may keep different rows of it. Equal means bit for bit in the
    product sentence-transformers computes (cos_sim of all queries against the whole corpus)."""
    queries = torch.stack([model.embeddings[model.row_of[row["anchor"]]] for row in expected])
    scores = st_util.cos_sim(queries, model.embeddings[len(expected) :])  # the corpus follows the anchors
    differing = []
    for index, (row, reference) in enumerate(zip(mined, expected)):
        if (row["anchor"], row["positive"], row["scores"]) != (reference["anchor"], reference["positive"], reference["scores"]):
            differing.append(index)
            continue
        for k in range(1, num_negatives + 1):
            ours = model.row_of[row[f"negative_{k}"]] - len(expected)
            theirs = model.row_of[reference[f"negative_{k}"]] - len(expected)
            if ours != theirs and scores[index, ours] != scores[index, theirs]:
                differing.append(index)
                break
    return differing


@pytest.mark.parametrize(
    "options",
    [
        dict(num_negatives=5),
        dict(num_negatives=3, relative_margin=0.05, range_max=12),
        dict(num_negatives=4, absolute_margin=0.0, include_positives=True),
    ],
    ids=["top-5", "relative-margin-window", "absolute-margin-with-positives"],
)
def test_near_duplicate_corpus_rows_are_ordered_as_sentence_transformers_orders_them(options):
    dataset, corpus, model = near_tie_problem(queries=600, documents=4000)
    common = dict(corpus=corpus, sampling_strategy="top", output_format="n-tuple", output_scores=True,
                  batch_size=1024, verbose=False, **options)
    expected = st_util.mine_hard_negatives(dataset, model, **common)
    mined = mine_hard_negatives(dataset, model, embedding_cache=False, **common)
    assert mined.column_names == expected.column_names
    assert len(mined) == len(expected)
    assert differing_beyond_exact_ties(mined.to_list(), expected.to_list(), model, options["num_negatives"]) == []
