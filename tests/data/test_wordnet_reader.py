"""The WordNet data-file reader, on a made-up fixture in the wndb(5) format."""

from __future__ import annotations

import pytest
from data.wordnet_fixture import NOUNS, synset_count, write_wordnet_fixture

from embedplug.data.wordnet import (
    INSTALL_HINT,
    LEXNAMES,
    WORDNET_DIR_ENV,
    WordNetMissingError,
    find_wordnet_dir,
    parse_data_line,
    read_synsets,
)


@pytest.fixture
def wordnet_dir(tmp_path):
    return write_wordnet_fixture(tmp_path / "wordnet")


def test_reads_every_synset_and_skips_the_licence_header(wordnet_dir):
    synsets = list(read_synsets(wordnet_dir))
    assert len(synsets) == synset_count()
    first = synsets[0]
    assert first.lemmas == ("zorblat",)
    assert first.lexname == "noun.animal"
    assert first.ss_type == "n"


def test_definition_drops_the_example_sentences(wordnet_dir):
    first = next(read_synsets(wordnet_dir, ["noun"]))
    assert first.definition == "a small furry animal of the test hills"


def test_lemmas_lose_underscores_and_adjective_markers(wordnet_dir):
    nouns = list(read_synsets(wordnet_dir, ["noun"]))
    adjectives = list(read_synsets(wordnet_dir, ["adj"]))
    assert nouns[4].lemmas == ("gadget box",)
    assert nouns[1].lemmas == ("mip", "mipling")
    assert [s.lemmas[0] for s in adjectives] == ["blue", "plucky", "glum", "zesty"]


def test_offsets_and_synset_ids_are_unique_across_parts_of_speech(wordnet_dir):
    synsets = list(read_synsets(wordnet_dir))
    assert len({s.synset_id for s in synsets}) == len(synsets)
    assert synsets[0].synset_id.endswith("-n")


def test_word_count_is_hexadecimal():
    lemmas = [f"w{i}" for i in range(11)]
    line = f"00000100 05 n 0b {' '.join(f'{w} 0' for w in lemmas)} 000 | eleven words"
    synset = parse_data_line(line)
    assert synset.lemmas == tuple(lemmas)
    assert synset.definition == "eleven words"


def test_malformed_line_is_an_error():
    with pytest.raises(ValueError, match="malformed"):
        parse_data_line("00000100 05 n")


def test_there_are_45_lexicographer_files():
    assert len(LEXNAMES) == 45
    assert LEXNAMES[5] == "noun.animal" and LEXNAMES[44] == "adj.ppl"


def test_missing_files_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(WORDNET_DIR_ENV, raising=False)
    with pytest.raises(WordNetMissingError, match="apt-get install -y wordnet-base") as caught:
        find_wordnet_dir(tmp_path / "nowhere")
    assert INSTALL_HINT in str(caught.value)


def test_environment_variable_points_at_the_files(wordnet_dir, monkeypatch):
    monkeypatch.setenv(WORDNET_DIR_ENV, str(wordnet_dir))
    assert find_wordnet_dir() == wordnet_dir


def test_a_missing_part_of_speech_file_is_reported(wordnet_dir):
    (wordnet_dir / "data.verb").unlink()
    with pytest.raises(WordNetMissingError, match="data.verb"):
        list(read_synsets(wordnet_dir))


def test_fixture_has_each_noun_class_four_times():
    counts = {}
    for lex_filenum, _, _ in NOUNS:
        counts[lex_filenum] = counts.get(lex_filenum, 0) + 1
    assert set(counts.values()) == {4}
