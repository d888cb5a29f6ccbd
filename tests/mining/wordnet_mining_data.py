"""Real-text mining datasets from WordNet (read at run time from Debian's wordnet-base), small and fixed.

* :func:`word_to_definition_rows`: (word, definition) rows. A third of the words have 2-4 senses, so
  queries have several positives; one row is repeated exactly (sentence-transformers counts repeated
  rows when it sizes its candidate window); a ``note`` column sits first so column names matter.
* :func:`extra_corpus`: definitions of other words, plus copies of some positives (de-duplication).
* :func:`synonym_rows`: (lemma, other lemma of the same synset) in both directions, so queries are
  also corpus texts (sentence-transformers 6.3 drops a query's own text), and one row whose positive
  is the query itself.
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict

import pytest


def _stable_order(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@functools.lru_cache(maxsize=1)
def _senses() -> tuple[dict[str, list[str]], list[tuple[str, ...]]]:
    from embedplug.data.wordnet import WordNetMissingError, read_synsets

    try:
        synsets = list(read_synsets(parts_of_speech=("noun", "verb")))
    except WordNetMissingError as exc:
        pytest.skip(str(exc))
    definitions: dict[str, list[str]] = defaultdict(list)
    for synset in synsets:
        for lemma in synset.lemmas:
            if synset.definition not in definitions[lemma]:
                definitions[lemma].append(synset.definition)
    lemma_groups = [synset.lemmas for synset in synsets if 2 <= len(synset.lemmas) <= 3]
    return dict(definitions), lemma_groups


def word_to_definition_rows(polysemous: int = 40, monosemous: int = 80) -> dict[str, list[str]]:
    definitions, _ = _senses()
    words = sorted(definitions, key=_stable_order)
    chosen = [w for w in words if 2 <= len(definitions[w]) <= 4][:polysemous]
    chosen += [w for w in words if len(definitions[w]) == 1][:monosemous]
    rows = {"note": [], "word": [], "definition": []}
    for number, word in enumerate(sorted(chosen, key=_stable_order)):
        for definition in definitions[word]:
            rows["note"].append(f"row {number}")
            rows["word"].append(word)
            rows["definition"].append(definition)
    for column in rows:  # one exact repeat of a (word, definition) row
        rows[column].append(rows[column][3])
    return rows


def extra_corpus(rows: dict[str, list[str]], count: int = 60) -> list[str]:
    definitions, _ = _senses()
    taken = set(rows["word"])
    others = [w for w in sorted(definitions, key=_stable_order)[5000:] if w not in taken][:count]
    corpus = [definitions[word][0] for word in others]
    return corpus + rows["definition"][:10:3]  # copies of positives: the same text, the same corpus row


def synonym_rows(groups: int = 45) -> dict[str, list[str]]:
    _, lemma_groups = _senses()
    chosen = sorted(lemma_groups, key=lambda lemmas: _stable_order("|".join(lemmas)))[:groups]
    rows = {"query": [], "answer": []}
    for lemmas in chosen:
        rows["query"].append(lemmas[0])
        rows["answer"].append(lemmas[1])
        rows["query"].append(lemmas[1])
        rows["answer"].append(lemmas[0])
    rows["query"].append(rows["query"][0])  # a query that is its own positive
    rows["answer"].append(rows["query"][0])
    return rows
