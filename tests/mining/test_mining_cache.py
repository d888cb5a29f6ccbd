"""The embedding cache: keyed by model weights and text, only new texts computed, shards read back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedplug.mining import EmbeddingCache, model_fingerprint
from embedplug.mining.cache import CACHE_DIR_ENV, default_cache_dir
from embedplug.mining.compat import behaviour_for


class Recorder:
    def __init__(self, dim=4):
        self.calls, self.dim = [], dim

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.stack([np.full(self.dim, len(text), dtype=np.float32) + np.arange(self.dim) for text in texts])


def test_only_missing_texts_are_computed_and_in_first_seen_order(tmp_path):
    cache, compute = EmbeddingCache(tmp_path), Recorder()
    first, computed = cache.get_or_compute("ns", ["aa", "b", "aa", "cccc"], compute)
    assert compute.calls == [["aa", "b", "cccc"]] and computed == 3
    assert first.shape == (4, 4) and np.array_equal(first[0], first[2])
    second, computed = cache.get_or_compute("ns", ["cccc", "dd", "b"], compute)
    assert compute.calls[1] == ["dd"] and computed == 1
    assert np.array_equal(second[0], first[3]) and np.array_equal(second[2], first[1])
    third, computed = EmbeddingCache(tmp_path).get_or_compute("ns", ["dd", "aa"], compute)  # a new process
    assert computed == 0 and len(compute.calls) == 2
    assert np.array_equal(third[1], first[0])


def test_namespaces_do_not_share_vectors(tmp_path):
    cache, compute = EmbeddingCache(tmp_path), Recorder()
    cache.get_or_compute("model-a", ["x"], compute)
    cache.get_or_compute("model-b", ["x"], compute)
    assert compute.calls == [["x"], ["x"]]


def test_a_torn_shard_is_ignored_and_recomputed(tmp_path):
    cache, compute = EmbeddingCache(tmp_path), Recorder()
    cache.get_or_compute("ns", ["x"], compute)
    for shard in (tmp_path / "ns").glob("shard-*.npz"):
        shard.write_bytes(b"not a zip")
    cache.get_or_compute("ns", ["x"], compute)
    assert compute.calls == [["x"], ["x"]]


def test_compute_returning_the_wrong_shape_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="returned shape"):
        EmbeddingCache(tmp_path).get_or_compute("ns", ["x", "y"], lambda texts: np.zeros((1, 3)))


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embedplug" / "embeddings"


def test_fingerprint_follows_the_weights_and_the_configuration():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    twin = torch.nn.Sequential(torch.nn.Linear(3, 2))
    twin.load_state_dict(model.state_dict())
    assert model_fingerprint(twin) == before  # same class, config and weights: same key
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0  # an in-place update, as an optimiser step does
    assert model_fingerprint(model) != before
    twin.max_seq_length = 16
    assert model_fingerprint(twin) != before


@pytest.mark.parametrize(("version", "newer"), [("6.2.0", False), ("6.2.1.dev0", False), ("6.3.0", True), ("7.0", True), ("5.1", False)])
def test_behaviour_by_version(version, newer):
    behaviour = behaviour_for(version)
    assert behaviour.excludes_query_text is newer and behaviour.cross_encoder_always_rescores is newer
    assert behaviour.extra_window_slots == int(newer)


def test_unreadable_version_is_an_error():
    with pytest.raises(ValueError, match="cannot read a sentence-transformers version"):
        behaviour_for("nightly")
