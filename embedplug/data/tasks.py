"""The built-in WordNet tasks: training datasets and their held-out evaluations.

``supersense``
    text = a synset's definition, label = its lexicographer file (45 classes such as noun.animal).
    Evaluated by kNN@1 of held-out definitions against labelled training definitions.
``reverse-dictionary``
    pairs (definition, the synset's lemmas joined by ", "). Evaluated by recall@1, recall@10 and MRR@10
    retrieving the lemmas of held-out definitions among the lemmas of the held-out synsets.

Synsets are split by a stable hash of their id (:mod:`embedplug.data.splits`), so every run on every
machine holds out the same synsets; both tasks share the split, so one task's training never sees the
other's held-out synsets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

from embedplug.data.splits import split
from embedplug.data.wordnet import Synset, find_wordnet_dir, read_synsets
from embedplug.evaluation.suites import Evaluation, KNNEvaluation, RetrievalEvaluation

SUPERSENSE = "supersense"
REVERSE_DICTIONARY = "reverse-dictionary"
TASKS = (SUPERSENSE, REVERSE_DICTIONARY)
LABEL_COLUMN = "label"

# The measurement sizes; configs may evaluate on fewer to fit a time budget.
DEFAULT_QUERIES = {SUPERSENSE: 2000, REVERSE_DICTIONARY: 5000}
DEFAULT_REFERENCES = 20000


@dataclasses.dataclass
class TrainingData:
    """What a run trains and evaluates on. ``label_column`` is set when rows are (text, class) pairs."""

    description: str
    train: object  # datasets.Dataset
    label_column: str | None
    evaluations: list[Evaluation]


@functools.lru_cache(maxsize=4)
def wordnet_split(directory: str) -> tuple[tuple[Synset, ...], tuple[Synset, ...]]:
    """``(train, held_out)`` synsets of the WordNet in ``directory``, each in stable hash order."""
    train, held_out = split(read_synsets(directory), key=lambda synset: synset.synset_id)
    return tuple(train), tuple(held_out)


def lemma_text(synset: Synset) -> str:
    return ", ".join(synset.lemmas)


def train_dataset(task: str, synsets: Sequence[Synset]):
    """The training rows of ``task`` as a :class:`datasets.Dataset`."""
    from datasets import Dataset

    if task == SUPERSENSE:
        return Dataset.from_dict(
            {"text": [s.definition for s in synsets], LABEL_COLUMN: [s.lex_filenum for s in synsets]}
        )
    if task == REVERSE_DICTIONARY:
        return Dataset.from_dict(
            {"anchor": [s.definition for s in synsets], "positive": [lemma_text(s) for s in synsets]}
        )
    raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")


def evaluation(
    task: str,
    train: Sequence[Synset],
    held_out: Sequence[Synset],
    queries: int | None = None,
    references: int | None = None,
) -> Evaluation:
    """The held-out evaluation of ``task`` on the first ``queries`` held-out synsets (stable sample)."""
    queries = queries or DEFAULT_QUERIES[task]
    chosen = held_out[:queries]
    if task == SUPERSENSE:
        reference_synsets = train[: references or DEFAULT_REFERENCES]
        return KNNEvaluation(
            name=SUPERSENSE,
            queries=[s.definition for s in chosen],
            query_labels=[s.lex_filenum for s in chosen],
            references=[s.definition for s in reference_synsets],
            reference_labels=[s.lex_filenum for s in reference_synsets],
        )
    if task == REVERSE_DICTIONARY:
        # Distinct synsets can share a lemma string ("bank"): the corpus holds each string once and
        # retrieving it counts as right for every synset it names.
        corpus = list(dict.fromkeys(lemma_text(s) for s in chosen))
        position = {text: index for index, text in enumerate(corpus)}
        return RetrievalEvaluation(
            name=REVERSE_DICTIONARY,
            queries=[s.definition for s in chosen],
            corpus=corpus,
            relevant_index=[position[lemma_text(s)] for s in chosen],
            query_classes=[s.lex_filenum for s in chosen],
        )
    raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")


def load_task(
    task: str,
    wordnet_dir: str | Path | None = None,
    train_size: int | None = None,
    evaluate: Sequence[str] | None = None,
    queries: int | None = None,
    references: int | None = None,
) -> TrainingData:
    """Training rows for ``task`` and the evaluations named in ``evaluate`` (default: ``task`` itself).

    ``train_size`` keeps the first N training synsets in hash order (a stable random sample).
    ``queries`` and ``references`` cap the evaluation sizes (defaults: the issue's measurement sizes).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    train, held_out = wordnet_split(str(find_wordnet_dir(wordnet_dir)))
    rows = train[:train_size] if train_size else train
    evaluations = [evaluation(name, train, held_out, queries, references) for name in (evaluate or [task])]
    return TrainingData(
        description=f"WordNet {task}: {len(rows)} training synsets, {len(held_out)} held out",
        train=train_dataset(task, rows),
        label_column=LABEL_COLUMN if task == SUPERSENSE else None,
        evaluations=evaluations,
    )
