"""An on-disk embedding cache keyed by model and text, so that re-mining does not re-embed.

Layout: ``<root>/<namespace>/shard-*.npz``, one shard per run that embedded something new, each with
``keys`` [n, 16] uint8 (BLAKE2b of the text) and ``embeddings`` [n, D]. A namespace is one way of
embedding: the model's fingerprint (:func:`model_fingerprint`: class, modules, max_seq_length, prompts,
tokenizer, and a hash of every weight), the role (query or document), the prompt arguments and the
encode options. Change the weights (a training step) and the namespace changes; change nothing and a
second run reads every vector back bit for bit.

The default root is ``$EMBEDPLUG_CACHE_DIR``, else ``$XDG_CACHE_HOME/embedplug/embeddings``, else
``~/.cache/embedplug/embeddings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

CACHE_DIR_ENV = "EMBEDPLUG_CACHE_DIR"
_KEY_BYTES = 16

# model -> (tensor version counters, weights digest): hashing the weights once per state, not per call.
_WEIGHT_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedplug" / "embeddings"


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_KEY_BYTES).digest()


def model_fingerprint(model) -> str:
    """A hex digest that changes whenever the model would embed a text differently.

    Hashes the class, ``repr`` (modules and their configs), ``max_seq_length``, ``truncate_dim``, the
    prompts, the tokenizer's name and size, and every tensor of the ``state_dict``. The weights' hash
    is memoised per model object until an in-place update (an optimiser step) bumps a tensor's
    version counter; the rest is cheap and read every time.
    """
    tokenizer = getattr(model, "tokenizer", None)
    description = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "repr": repr(model),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "truncate_dim": getattr(model, "truncate_dim", None),
        "prompts": getattr(model, "prompts", None),
        "default_prompt_name": getattr(model, "default_prompt_name", None),
        "tokenizer": None if tokenizer is None else [
            type(tokenizer).__name__, getattr(tokenizer, "name_or_path", None), getattr(tokenizer, "vocab_size", None),
        ],
        "weights": _weights_digest(model),
    }
    return hashlib.blake2b(json.dumps(description, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def _weights_digest(model) -> str:
    state = model.state_dict()
    versions = tuple((name, tensor._version) for name, tensor in state.items())
    memo = _WEIGHT_DIGESTS.get(model)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in state.items():
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    weights = digest.hexdigest()
    try:
        _WEIGHT_DIGESTS[model] = (versions, weights)
    except TypeError:  # not weak-referenceable: just do not memoise
        pass
    return weights


def namespace_key(**parts) -> str:
    """A directory name for one way of embedding (JSON of ``parts``, hashed)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


class EmbeddingCache:
    """Embeddings of texts under ``root``, one folder per namespace (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def get_or_compute(
        self,
        namespace: str,
        texts: Sequence[str],
        compute: Callable[[list[str]], np.ndarray],
    ) -> tuple[np.ndarray, int]:
        """Embeddings [len(texts), D] of ``texts``; only the texts not cached go to ``compute``.

        ``compute`` receives the missing texts (each once, in first-seen order) and returns their
        embeddings [m, D]; they are written as a new shard. Returns ``(embeddings, number computed)``.
        """
        keys = [text_key(text) for text in texts]
        known = self._load(namespace)
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in known and key not in missing:
                missing[key] = text
        if missing:
            computed = np.asarray(compute(list(missing.values())))
            if computed.ndim != 2 or computed.shape[0] != len(missing):
                raise ValueError(
                    f"the embedding function returned shape {computed.shape} for {len(missing)} texts"
                )
            self._write_shard(namespace, list(missing), computed)
            known.update(zip(missing, computed))
        if not texts:
            return np.empty((0, 0), dtype=np.float32), 0
        return np.stack([known[key] for key in keys]), len(missing)

    def _load(self, namespace: str) -> dict[bytes, np.ndarray]:
        folder = self.root / namespace
        vectors: dict[bytes, np.ndarray] = {}
        if not folder.is_dir():
            return vectors
        for shard in sorted(folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    shard_keys, embeddings = data["keys"], data["embeddings"]
            except (OSError, ValueError, KeyError):
                continue  # a torn or foreign file: recompute rather than fail
            for key, vector in zip(shard_keys, embeddings):
                vectors[key.tobytes()] = vector
        return vectors

    def _write_shard(self, namespace: str, keys: list[bytes], embeddings: np.ndarray) -> None:
        folder = self.root / namespace
        folder.mkdir(parents=True, exist_ok=True)
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), _KEY_BYTES)
        # Write then rename, so a reader never sees half a shard.
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            np.savez(file, keys=key_array, embeddings=embeddings)
        os.replace(temporary, folder / f"shard-{uuid.uuid4().hex}.npz")
