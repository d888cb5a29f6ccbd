"""A tiny WordNet database in the wndb(5) ``data.*`` format, made up for tests (no WordNet text)."""

from __future__ import annotations

from pathlib import Path

LICENCE_HEADER = "  1 This is a made-up test database in the format of WordNet 3.0 data files.\n  2 \n"

# (lex_filenum, lemmas, gloss) per part of speech; offsets are assigned in order like real byte offsets.
NOUNS = [
    (5, ["zorblat"], 'a small furry animal of the test hills; "the zorblat hid"'),
    (5, ["mip", "mipling"], "a striped animal that eats moss"),
    (5, ["grizzen"], "a large animal with six legs"),
    (5, ["flurp"], "an animal that lives in puddles"),
    (6, ["gadget_box"], "a box for keeping gadgets"),
    (6, ["wrenchet"], "a tool for turning bolts"),
    (6, ["clampit", "clamp"], "a device that holds things together"),
    (6, ["sprocketeer"], "a machine with many toothed wheels"),
    (13, ["blorn_bread"], "a bread made from blorn flour"),
    (13, ["squee"], "a sweet drink made from berries"),
    (13, ["munchet"], "a small crunchy snack"),
    (13, ["pottle"], "a thick soup of roots"),
    (18, ["tinker"], "a person who mends pots"),
    (18, ["wayfarer", "walker"], "a person who travels on foot"),
    (18, ["scrivener"], "a person who copies documents"),
    (18, ["mip"], "a person who keeps mips"),  # shares the lemma string "mip" with a noun.animal synset
]
VERBS = [
    (38, ["zoom"], "move very fast"),
    (38, ["trundle"], "move slowly on wheels"),
    (38, ["scamper"], "run with quick light steps"),
    (38, ["amble"], "walk at a slow pace"),
]
ADJECTIVES = [
    (0, ["blue(a)"], "of the colour of a clear sky"),
    (0, ["plucky(p)"], "showing courage"),
    (0, ["glum(ip)"], "looking sad"),
    (0, ["zesty"], "full of flavour"),
]
ADVERBS = [
    (2, ["swiftly"], "in a fast manner"),
    (2, ["glumly"], "in a sad manner"),
    (2, ["oddly"], "in a strange manner"),
    (2, ["boldly"], "in a brave manner"),
]
FILES = {"noun": ("n", NOUNS), "verb": ("v", VERBS), "adj": ("a", ADJECTIVES), "adv": ("r", ADVERBS)}


def data_line(offset: int, lex_filenum: int, ss_type: str, lemmas: list[str], gloss: str) -> str:
    words = " ".join(f"{lemma} 0" for lemma in lemmas)
    # w_cnt is two hex digits, p_cnt three decimal digits; one pointer keeps the line realistic.
    return f"{offset:08d} {lex_filenum:02d} {ss_type} {len(lemmas):02x} {words} 001 @ 00001740 n 0000 | {gloss}  \n"


def write_wordnet_fixture(directory: Path) -> Path:
    """Write data.noun, data.verb, data.adj and data.adv into ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for part, (ss_type, synsets) in FILES.items():
        text = LICENCE_HEADER
        for lex_filenum, lemmas, gloss in synsets:
            text += data_line(len(text), lex_filenum, ss_type, lemmas, gloss)
        (directory / f"data.{part}").write_text(text, encoding="latin-1")
    return directory


def synset_count() -> int:
    return sum(len(synsets) for _, synsets in FILES.values())
