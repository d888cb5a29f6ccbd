"""``embedplug.mining.mine_hard_negatives`` against sentence-transformers' own function, on WordNet text and
the bundled all-MiniLM-L6-v2: identical datasets for ``sampling_strategy="top"`` over option sets that
cover every argument, identical draws for ``"random"`` under the same seed, the same errors, the same
printed summary. Runs against whichever sentence-transformers is installed (6.2 or 6.3).

Embeddings are computed once per text set: sentence-transformers reads its ``cache_folder``, embedplug
its own cache, both module-scoped.
"""

from __future__ import annotations

import copy
import hashlib
import random

import numpy as np
import pytest
import torch
from _support import bundled_model_path
from wordnet_mining_data import extra_corpus, synonym_rows, word_to_definition_rows

pytestmark = pytest.mark.slow
datasets = pytest.importorskip("datasets")
st_util = pytest.importorskip("sentence_transformers.util")

from embedplug.mining import hard_negatives as embedplug_hard_negatives  # noqa: E402
from embedplug.mining import mine_hard_negatives  # noqa: E402

COLUMNS = {"anchor_column_name": "word", "positive_column_name": "definition"}


class TrigramCrossEncoder:
    """A stand-in for sentence-transformers' CrossEncoder: ``predict`` is all ``mine_hard_negatives`` calls.

    Scores a pair by the overlap of character trigrams, plus a tiny hash term so that no two pairs tie.
    """

    def __init__(self):
        self.calls = 0

    def predict(self, pairs, batch_size=32, convert_to_tensor=False, pool=None, **_):
        self.calls += 1
        scores = [self._score(query, passage) for query, passage in pairs]
        return torch.tensor(scores, dtype=torch.float32) if convert_to_tensor else np.array(scores, dtype=np.float32)

    @staticmethod
    def _score(query: str, passage: str) -> float:
        def trigrams(text):
            text = f"  {text.lower()} "
            return {text[i : i + 3] for i in range(len(text) - 2)}

        a, b = trigrams(query), trigrams(passage)
        jitter = int.from_bytes(hashlib.blake2b(f"{query}|{passage}".encode(), digest_size=4).digest(), "big")
        return len(a & b) / max(len(a | b), 1) + jitter * 1e-12


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    model.max_seq_length = 32
    return model


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return tmp_path_factory.mktemp("st-cache"), tmp_path_factory.mktemp("embedplug-cache")


@pytest.fixture(scope="module")
def words():
    return datasets.Dataset.from_dict(word_to_definition_rows())


@pytest.fixture(scope="module")
def synonyms():
    return datasets.Dataset.from_dict(synonym_rows())


def mine_both(dataset, model, caches, seed=0, **options):
    st_cache, our_cache = caches
    random.seed(seed)
    expected = st_util.mine_hard_negatives(dataset, model, verbose=False, cache_folder=str(st_cache), **options)
    random.seed(seed)
    ours = mine_hard_negatives(dataset, model, verbose=False, cache_folder=str(our_cache), **options)
    return ours, expected


def assert_same_dataset(ours, expected):
    assert ours.features == expected.features
    assert ours.num_rows == expected.num_rows
    assert ours.to_dict() == expected.to_dict()


# Every "top" option set: (id, dataset fixture, options). The text sets are few, so embeddings are reused.
TOP_CASES = [
    ("defaults-first-two-columns", "pairs", {}),
    ("n-tuple-scores-rank-window", "words", dict(output_format="n-tuple", output_scores=True, num_negatives=4, range_min=2, range_max=12)),
    ("triplet-scores-both-margins", "words", dict(output_scores=True, absolute_margin=0.02, relative_margin=0.05, num_negatives=2)),
    ("labeled-pair-score-bounds", "words", dict(output_format="labeled-pair", max_score=0.6, min_score=0.15)),
    ("labeled-pair-scores-relative", "words", dict(output_format="labeled-pair", output_scores=True, relative_margin=0.1)),
    ("labeled-list-absolute", "words", dict(output_format="labeled-list", absolute_margin=0.0, num_negatives=5)),
    ("labeled-list-scores-window", "words", dict(output_format="labeled-list", output_scores=True, range_max=8, min_score=0.2)),
    ("separate-corpus-with-duplicates", "words", dict(corpus="extra", num_negatives=4, relative_margin=0.05, output_format="n-tuple")),
    ("include-positives", "words", dict(include_positives=True, output_scores=True, num_negatives=4)),
    ("include-positives-forces-n-tuple", "words", dict(include_positives=True, output_format="labeled-pair", range_max=6)),
    ("deprecated-as-triplets-and-margin", "words", dict(as_triplets=False, margin=0.05)),
    ("deprecated-n-tuple-scores", "words", dict(output_format="n-tuple-scores", max_score=0.7)),
    ("query-chunks", "words", dict(faiss_batch_size=7, num_negatives=2, relative_margin=0.02)),
    ("queries-in-corpus", "synonyms", dict(num_negatives=2, output_format="n-tuple", output_scores=True)),
    ("queries-in-corpus-include-positives", "synonyms", dict(include_positives=True, num_negatives=3)),
    ("queries-in-corpus-labeled-list", "synonyms", dict(output_format="labeled-list", min_score=0.3, range_max=10)),
    ("raw-prompts", "synonyms", dict(query_prompt="query: ", corpus_prompt="passage: ", num_negatives=2)),
    ("batch-size", "synonyms", dict(batch_size=8, num_negatives=2, output_format="labeled-pair")),
    ("cross-encoder-with-filters", "words", dict(cross_encoder="ce", max_score=0.5, min_score=0.02, output_scores=True)),
    ("cross-encoder-margins-list", "words", dict(cross_encoder="ce", relative_margin=0.1, output_format="labeled-list", output_scores=True)),
    ("cross-encoder-no-filters", "words", dict(cross_encoder="ce", output_format="n-tuple", output_scores=True, num_negatives=2)),
]


def resolve(case_dataset, options, request):
    options = dict(options)
    if case_dataset == "pairs":
        dataset = request.getfixturevalue("words").select_columns(["word", "definition"])
    else:
        dataset = request.getfixturevalue(case_dataset)
        if case_dataset == "words":
            options.update(COLUMNS)
    if options.get("corpus") == "extra":
        options["corpus"] = extra_corpus(word_to_definition_rows())
    if options.get("cross_encoder") == "ce":
        options["cross_encoder"] = TrigramCrossEncoder()
    return dataset, options


@pytest.mark.parametrize(("case_dataset", "options"), [case[1:] for case in TOP_CASES], ids=[case[0] for case in TOP_CASES])
def test_top_sampling_gives_sentence_transformers_dataset(case_dataset, options, model, caches, request):
    dataset, options = resolve(case_dataset, options, request)
    ours, expected = mine_both(dataset, model, caches, **options)
    assert expected.num_rows > 0
    assert_same_dataset(ours, expected)


def test_prompt_names_resolve_like_sentence_transformers(model, caches, synonyms):
    prompted = copy.deepcopy(model)
    prompted.prompts = {**model.prompts, "short": "word: ", "long": "a word or phrase: "}
    ours, expected = mine_both(synonyms, prompted, caches, query_prompt_name="short", corpus_prompt_name="long")
    assert_same_dataset(ours, expected)
    plain, _ = mine_both(synonyms, model, caches)
    assert plain.to_dict() != ours.to_dict()  # the prompts changed the embeddings


@pytest.mark.parametrize("similarity", ["dot", "euclidean", "manhattan"])
def test_other_similarity_functions(similarity, model, caches, words):
    other = copy.deepcopy(model)
    other.similarity_fn_name = similarity
    ours, expected = mine_both(words, other, caches, **COLUMNS, num_negatives=2, output_format="n-tuple", output_scores=True, relative_margin=0.05)
    assert_same_dataset(ours, expected)


def test_use_faiss_is_accepted_without_faiss_and_changes_nothing(model, caches, words):
    st_cache, our_cache = caches
    expected = st_util.mine_hard_negatives(words, model, **COLUMNS, verbose=False, cache_folder=str(st_cache))
    ours = mine_hard_negatives(words, model, **COLUMNS, use_faiss=True, verbose=False, cache_folder=str(our_cache))
    assert_same_dataset(ours, expected)


@pytest.mark.parametrize(
    "options",
    [
        dict(sampling_strategy="random", num_negatives=3, range_max=12, output_format="n-tuple", output_scores=True),
        dict(sampling_strategy="random", relative_margin=0.05, output_format="labeled-list"),
        dict(sampling_strategy="random", num_negatives=2, max_score=0.5, min_score=0.2),
        dict(sampling_strategy="random", cross_encoder="ce", num_negatives=2, range_max=9, output_format="labeled-pair"),
    ],
    ids=["n-tuple", "relative-margin", "score-bounds", "cross-encoder"],
)
def test_random_sampling_draws_what_sentence_transformers_draws(options, model, caches, request):
    dataset, options = resolve("words", options, request)
    for seed in (0, 1):
        ours, expected = mine_both(dataset, model, caches, seed=seed, **options)
        assert_same_dataset(ours, expected)


def test_random_sampling_is_uniform_over_the_candidate_window(model, caches, words):
    """Position, in the query's ranked candidate window, of each randomly chosen negative: uniform."""
    _, our_cache = caches
    window, picks = 10, 3
    ranked = mine_hard_negatives(
        words, model, **COLUMNS, num_negatives=window, range_max=window, output_format="n-tuple", verbose=False,
        cache_folder=str(our_cache),
    )
    candidates = {}
    for row in ranked:
        candidates[row["word"]] = [row[f"negative_{i}"] for i in range(1, window + 1)]
    counts = np.zeros(window)
    for seed in range(6):
        random.seed(seed)
        sampled = mine_hard_negatives(
            words, model, **COLUMNS, num_negatives=picks, range_max=window, sampling_strategy="random",
            output_format="n-tuple", verbose=False, cache_folder=str(our_cache),
        )
        seen = set()
        for row in sampled:
            if row["word"] in seen:
                continue  # a query with several positives repeats the same draw
            seen.add(row["word"])
            for i in range(1, picks + 1):
                counts[candidates[row["word"]].index(row[f"negative_{i}"])] += 1
    expected = counts.sum() / window
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # 9 degrees of freedom: P(chi2 > 33.7) = 1e-4. Always taking the top 3 would give chi2 > 1000.
    assert chi_square < 33.7, counts


def test_multi_process_pools_are_started_and_stopped_as_sentence_transformers_does(model, caches, words, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(model, "start_multi_process_pool", lambda target_devices=None: calls.append(("start", target_devices)))
    monkeypatch.setattr(model, "stop_multi_process_pool", lambda pool: calls.append(("stop", pool)))
    expected = st_util.mine_hard_negatives(words, model, **COLUMNS, use_multi_process=["cpu", "cpu"], verbose=False)
    st_calls, calls[:] = list(calls), []
    ours = mine_hard_negatives(
        words, model, **COLUMNS, use_multi_process=["cpu", "cpu"], verbose=False, cache_folder=str(tmp_path)
    )
    assert calls == st_calls == [("start", ["cpu", "cpu"]), ("stop", None)]
    assert_same_dataset(ours, expected)
    calls[:] = []
    mine_hard_negatives(words, model, **COLUMNS, use_multi_process=True, verbose=False, cache_folder=str(tmp_path))
    assert calls == []  # everything was cached: no pool to start


def test_verbose_summary_prints_sentence_transformers_lines(model, caches, words, capsys):
    st_cache, our_cache = caches
    options = dict(**COLUMNS, relative_margin=0.05, max_score=0.7, num_negatives=4)
    st_util.mine_hard_negatives(words, model, cache_folder=str(st_cache), **options)
    expected = capsys.readouterr().out.splitlines()
    mine_hard_negatives(words, model, cache_folder=str(our_cache), **options)
    ours = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[Cache]")]
    expected = [line for line in expected if not line.startswith("[Cache]")]
    assert ours == expected
    assert any(line.startswith("Skipped") and "relative_margin" in line for line in ours)
    mine_hard_negatives(words, model, cache_folder=str(our_cache), **options, verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("dataset_rows", "options"),
    [
        ({"a": [], "b": []}, {}),
        ({"a": ["x"], "b": ["y"]}, dict(faiss_batch_size=0)),
        ({"a": ["x"]}, {}),
        ({"a": ["x"], "b": ["y"]}, dict(num_negatives=0)),
        ({"a": ["x"], "b": ["y"]}, dict(range_min=-1, range_max=4)),
        ({"a": ["x"], "b": ["y"]}, dict(range_min=5, range_max=5)),
        ({"a": ["x"], "b": ["y"]}, dict(num_negatives=4, range_min=2, range_max=5)),
        ({"a": ["x"], "b": ["y"]}, dict(output_format="pairs")),
    ],
    ids=["empty", "faiss-batch-size", "one-column", "num-negatives", "range-min", "empty-range", "window-too-small", "format"],
)
def test_bad_arguments_raise_sentence_transformers_errors(dataset_rows, options, model):
    dataset = datasets.Dataset.from_dict(dataset_rows)
    with pytest.raises(Exception) as expected:
        st_util.mine_hard_negatives(dataset, model, verbose=False, **options)
    with pytest.raises(type(expected.value)) as ours:
        mine_hard_negatives(dataset, model, verbose=False, embedding_cache=False, **options)
    assert str(ours.value) == str(expected.value)


def test_cold_cache_embeds_exactly_what_sentence_transformers_embeds(model, caches, words, tmp_path, monkeypatch):
    """A cold run feeds the model the same texts in the same batches; a second run embeds nothing."""
    st_cache, _ = caches
    st_util.mine_hard_negatives(words, model, **COLUMNS, verbose=False, cache_folder=str(st_cache))
    st_arrays = [np.load(path) for path in st_cache.glob("*_embeddings_*.npy")]
    encoded = []
    for name in ("encode_query", "encode_document"):
        original = getattr(model, name)

        def spy(texts, *args, _original=original, _name=name, **kwargs):
            encoded.append((_name, len(texts)))
            return _original(texts, *args, **kwargs)

        monkeypatch.setattr(model, name, spy)
    result = embedplug_hard_negatives.mine(words, model, **COLUMNS, verbose=False, cache_folder=str(tmp_path))
    assert sorted(encoded) == [("encode_document", result.report.corpus_size), ("encode_query", result.report.unique_queries)]
    shards = [np.load(path)["embeddings"] for path in tmp_path.rglob("shard-*.npz")]
    assert len(shards) == 2
    for shard in shards:  # the corpus and the query embeddings, bit for bit what sentence-transformers cached
        assert any(array.shape == shard.shape and np.array_equal(array, shard) for array in st_arrays)
    encoded.clear()
    again = embedplug_hard_negatives.mine(words, model, **COLUMNS, verbose=False, cache_folder=str(tmp_path))
    assert encoded == [] and again.report.embedded_texts == 0
    assert_same_dataset(again.dataset, result.dataset)


def test_st_version_selects_whether_a_query_text_can_be_its_own_negative(model, caches, synonyms):
    """6.3 drops a corpus row equal to the query (6.2 could return the query itself as a hard negative)."""
    _, our_cache = caches
    own_negatives = {}
    for version in ("6.2", "6.3"):
        mined = mine_hard_negatives(
            synonyms, model, num_negatives=3, output_format="n-tuple", verbose=False, cache_folder=str(our_cache),
            st_version=version,
        )
        own_negatives[version] = sum(
            row["query"] in (row["negative_1"], row["negative_2"], row["negative_3"]) for row in mined
        )
    assert own_negatives["6.2"] > 0
    assert own_negatives["6.3"] == 0
