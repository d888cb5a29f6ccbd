"""A reader for WordNet 3.0's ``data.*`` files (the ``wndb(5)`` format), read at run time.

Only what the built-in tasks need is parsed: the synset offset, lexicographer file, part of speech,
lemmas and the definition part of the gloss. WordNet's text is never copied into this repository;
Debian's ``wordnet-base`` package installs the files under ``/usr/share/wordnet``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

WORDNET_DIR_ENV = "EMBEDPLUG_WORDNET_DIR"
# Where distributions put the database: Debian/Ubuntu's wordnet-base first, then the upstream layouts.
DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/wordnet/dict")
INSTALL_HINT = "sudo apt-get install -y wordnet-base"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")

# The 45 lexicographer files, indexed by the lex_filenum field (fixed by lexnames(5); wordnet-base does
# not ship the ``lexnames`` file itself).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)  # fmt: skip

# Adjective lemmas may carry a syntactic marker: "(a)", "(p)" or "(ip)".
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


class WordNetMissingError(FileNotFoundError):
    """The WordNet database files are not where we looked; the message says how to install them."""


@dataclasses.dataclass(frozen=True)
class Synset:
    """One WordNet synset: ``synset_id`` is ``"<offset>-<ss_type>"``, unique across parts of speech."""

    offset: int
    ss_type: str  # n, v, a, s (adjective satellite) or r
    lex_filenum: int
    lemmas: tuple[str, ...]
    definition: str

    @property
    def synset_id(self) -> str:
        # Satellites live in data.adj with adjectives; "a" keeps ids unique per file, which is what matters.
        return f"{self.offset:08d}-{'a' if self.ss_type == 's' else self.ss_type}"

    @property
    def lexname(self) -> str:
        return LEXNAMES[self.lex_filenum]


def find_wordnet_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder holding ``data.noun`` etc.: ``directory``, ``$EMBEDPLUG_WORDNET_DIR`` or a system default.

    Raises :class:`WordNetMissingError` naming the install command when none has the files.
    """
    candidates = [directory] if directory else [os.environ.get(WORDNET_DIR_ENV), *DEFAULT_WORDNET_DIRS]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "data.noun").is_file():
            return Path(candidate)
    looked = ", ".join(str(c) for c in candidates if c)
    raise WordNetMissingError(
        f"WordNet 3.0 data files not found (looked in: {looked}). Install them with `{INSTALL_HINT}` "
        f"(or point {WORDNET_DIR_ENV} at a folder holding data.noun, data.verb, data.adj, data.adv)."
    )


def parse_data_line(line: str) -> Synset | None:
    """One ``data.*`` line as a :class:`Synset`; ``None`` for the licence header and glossless synsets.

    Format (wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt ... | gloss``,
    where ``w_cnt`` is two hexadecimal digits and the gloss is a definition followed by optional
    ``; "example"`` sentences.
    """
    if not line or line.startswith("  "):  # the licence header lines start with two spaces
        return None
    fields_part, _, gloss = line.partition(" | ")
    fields = fields_part.split()
    if len(fields) < 6:
        raise ValueError(f"malformed WordNet data line: {line[:80]!r}")
    word_count = int(fields[3], 16)
    words = fields[4 : 4 + 2 * word_count : 2]
    lemmas = tuple(dict.fromkeys(_clean_lemma(word) for word in words))
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    if not definition:
        return None
    return Synset(
        offset=int(fields[0]), ss_type=fields[2], lex_filenum=int(fields[1]), lemmas=lemmas, definition=definition
    )


def _clean_lemma(word: str) -> str:
    return _ADJECTIVE_MARKER.sub("", word).replace("_", " ")


def read_synsets(
    directory: str | os.PathLike | None = None, parts_of_speech: Iterable[str] = PARTS_OF_SPEECH
) -> Iterator[Synset]:
    """Every synset with a definition in the ``data.<pos>`` files, in file order."""
    root = find_wordnet_dir(directory)
    for part in parts_of_speech:
        path = root / f"data.{part}"
        if not path.is_file():
            raise WordNetMissingError(f"{path} is missing; reinstall WordNet with `{INSTALL_HINT}`")
        # latin-1: WordNet 3.0 is ASCII apart from a handful of bytes; this never fails to decode.
        with path.open(encoding="latin-1") as lines:
            for line in lines:
                synset = parse_data_line(line.rstrip("\n"))
                if synset is not None:
                    yield synset
