"""De-duplication of texts: identical texts become one corpus row, as sentence-transformers does it."""

from __future__ import annotations

from collections.abc import Iterable


def unique_texts(texts: Iterable[str]) -> tuple[list[str], list[int]]:
    """``(unique, row_of)``: the texts in first-seen order without repeats, and each input's row in it.

    Mining excludes a query's positive by corpus row, so a duplicate of a positive (same text) is the
    positive's own row and is excluded with it; a corpus with repeated rows would let the copy through.
    """
    row_of_text: dict[str, int] = {}
    row_of = [row_of_text.setdefault(text, len(row_of_text)) for text in texts]
    return list(row_of_text), row_of
