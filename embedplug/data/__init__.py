"""Built-in training data read at run time: WordNet 3.0 synsets and the tasks built on them."""

from embedplug.data.wordnet import LEXNAMES, Synset, WordNetMissingError, find_wordnet_dir, read_synsets

__all__ = ["LEXNAMES", "Synset", "WordNetMissingError", "find_wordnet_dir", "read_synsets"]
