"""The built-in tasks on a made-up WordNet: dataset columns, shared splits and evaluation sets."""

from __future__ import annotations

import pytest
from data.wordnet_fixture import synset_count, write_wordnet_fixture

from embedplug.data import splits
from embedplug.data.tasks import REVERSE_DICTIONARY, SUPERSENSE, evaluation, load_task, wordnet_split


@pytest.fixture
def wordnet_dir(tmp_path, monkeypatch):
    # Hold out half, so the tiny fixture has enough held-out synsets to evaluate on.
    monkeypatch.setattr(splits, "HOLDOUT_FRACTION", 0.5)
    wordnet_split.cache_clear()
    yield write_wordnet_fixture(tmp_path / "wordnet")
    wordnet_split.cache_clear()


def test_supersense_rows_are_definitions_with_lexicographer_labels(wordnet_dir):
    data = load_task(SUPERSENSE, wordnet_dir=wordnet_dir)
    assert data.train.column_names == ["text", "label"]
    assert data.label_column == "label"
    assert set(data.train["label"]) <= {0, 2, 5, 6, 13, 18, 38}
    assert [e.name for e in data.evaluations] == [SUPERSENSE]


def test_reverse_dictionary_rows_pair_definitions_with_joined_lemmas(wordnet_dir):
    data = load_task(REVERSE_DICTIONARY, wordnet_dir=wordnet_dir)
    assert data.train.column_names == ["anchor", "positive"]
    assert data.label_column is None
    pairs = dict(zip(data.train["anchor"], data.train["positive"]))
    train, _ = wordnet_split(str(wordnet_dir))
    for synset in train:
        assert pairs[synset.definition] == ", ".join(synset.lemmas)


def test_train_and_held_out_are_disjoint_and_complete(wordnet_dir):
    train, held_out = wordnet_split(str(wordnet_dir))
    ids = [s.synset_id for s in train] + [s.synset_id for s in held_out]
    assert len(ids) == len(set(ids)) == synset_count()
    assert held_out, "the fixture must hold some synsets out"


def test_reverse_dictionary_corpus_holds_each_lemma_string_once(wordnet_dir):
    train, held_out = wordnet_split(str(wordnet_dir))
    task = evaluation(REVERSE_DICTIONARY, train, train + held_out, queries=1000)
    assert len(task.corpus) == len(set(task.corpus))
    # "mip" names a noun.animal and a noun.person synset: both queries point at the same corpus entry.
    mip_queries = [i for i, text in enumerate(task.queries) if "mip" in text]
    assert len({task.relevant_index[i] for i in mip_queries}) == 1
    for query, index in zip(task.queries, task.relevant_index):
        assert task.corpus[index]


def test_supersense_evaluation_uses_training_definitions_as_references(wordnet_dir):
    train, held_out = wordnet_split(str(wordnet_dir))
    task = evaluation(SUPERSENSE, train, held_out, queries=3, references=5)
    assert task.queries == [s.definition for s in held_out[:3]]
    assert task.references == [s.definition for s in train[:5]]
    assert task.primary_metric == "knn@1"


def test_train_size_and_extra_evaluations(wordnet_dir):
    data = load_task(SUPERSENSE, wordnet_dir=wordnet_dir, train_size=3, evaluate=[SUPERSENSE, REVERSE_DICTIONARY])
    assert len(data.train) == 3
    assert [e.name for e in data.evaluations] == [SUPERSENSE, REVERSE_DICTIONARY]


def test_unknown_task_lists_the_built_in_ones(wordnet_dir):
    with pytest.raises(ValueError, match="supersense, reverse-dictionary"):
        load_task("hypernyms", wordnet_dir=wordnet_dir)
