"""The loss line of a trained model's card, for embedplug's drop-in losses.

sentence-transformers writes a card (README.md) when a model is saved. For its own losses the line is
``* Loss: [<code>GISTEmbedLoss</code>](https://sbert.net/...#gistembedloss) with these parameters:``; for any
other class it prints the bare class path, ``<code>embedplug.losses.gist_embed.GISTEmbedLoss</code>``, with
no link. The path stays (it is the class that trained the model), and :func:`link_embedplug_losses` adds
what a reader needs after it: that the class is embedplug's drop-in for the sentence-transformers loss of
the same name, a link to that loss's documentation (same options, same numbers) and the embedplug page
that documents the drop-in. The loss's citation is already in the card's Citation section. Nothing else in
the card changes. ``embedplug train`` applies it to the model it saves; with your own trainer, call
:func:`link_embedplug_losses_in` on the saved folder.
"""

from __future__ import annotations

import re
from pathlib import Path

_ST_LOSS_DOCS = "https://sbert.net/docs/package_reference/sentence_transformer/losses.html#{anchor}"
# Where each family of drop-ins is documented in embedplug's repository.
_EMBEDPLUG_DOCS = {
    "embedplug.losses.gist_embed": "docs/gist-losses.md",
    "embedplug.losses.cached_gist_embed": "docs/gist-losses.md",
    "embedplug.losses.multiple_negatives_ranking": "docs/gist-losses.md",
    "embedplug.losses.cached_multiple_negatives_ranking": "docs/gist-losses.md",
}
_DEFAULT_EMBEDPLUG_DOC = "docs/batch-mining-losses.md"
# The bare class path sentence-transformers' template prints for a loss outside its package.
# (A line already followed by " (embedplug's" is left alone, so linking twice changes nothing.)
_LOSS_LINE = re.compile(r"^(\* Loss: )<code>(embedplug\.losses\.[\w.]+)</code>(?! \(embedplug's)", re.MULTILINE)


def loss_reference(fullname: str) -> str | None:
    """The text that follows ``<code>fullname</code>`` on the card's loss line, or None when ``fullname``
    is not a drop-in (no sentence-transformers loss of the same name)."""
    module, _, name = fullname.rpartition(".")
    try:
        from sentence_transformers.sentence_transformer import losses as st_losses
    except ImportError:  # pragma: no cover - a card is only written by sentence-transformers
        return None
    if not isinstance(getattr(st_losses, name, None), type):
        return None
    doc = _EMBEDPLUG_DOCS.get(module, _DEFAULT_EMBEDPLUG_DOC)
    link = _ST_LOSS_DOCS.format(anchor=name.lower())
    return (
        f" (embedplug's fused drop-in for sentence-transformers' [<code>{name}</code>]({link}): same options "
        f"and numbers; see {doc} in embedplug)"
    )


def link_embedplug_losses(card: str) -> str:
    """``card`` with every embedplug drop-in on a ``* Loss:`` line followed by its reference."""

    def annotate(match: re.Match) -> str:
        reference = loss_reference(match.group(2))
        return match.group(0) + reference if reference else match.group(0)

    return _LOSS_LINE.sub(annotate, card)


def link_embedplug_losses_in(model_dir: str | Path) -> bool:
    """Rewrite ``model_dir/README.md`` with :func:`link_embedplug_losses`; False when there is no card."""
    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return False
    card = path.read_text(encoding="utf-8")
    linked = link_embedplug_losses(card)
    if linked != card:
        path.write_text(linked, encoding="utf-8")
    return True
