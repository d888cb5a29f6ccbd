"""A model trained with an embedplug drop-in gets sentence-transformers' card, with a useful loss line."""

from __future__ import annotations

import difflib

import pytest
from _support import bundled_model_path

from embedplug.model_card import link_embedplug_losses, link_embedplug_losses_in

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def _card(tmp_path, loss_module, loss_name: str) -> str:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    data = Dataset.from_dict({"anchor": ["a cat", "a dog", "a car"], "positive": ["feline", "canine", "vehicle"]})
    loss_class = getattr(loss_module, loss_name)
    loss = loss_class(model, model) if "GIST" in loss_name else loss_class(model)
    arguments = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", max_steps=1)
    SentenceTransformerTrainer(model=model, args=arguments, train_dataset=data, loss=loss)  # fills the card data
    folder = tmp_path / loss_module.__name__
    model.save(str(folder))
    assert link_embedplug_losses_in(folder)
    return (folder / "README.md").read_text()


@pytest.mark.parametrize("loss_name", ["GISTEmbedLoss", "CachedMultipleNegativesRankingLoss"])
def test_card_is_sentence_transformers_own_but_for_a_linked_loss_line(tmp_path, loss_name):
    import embedplug.losses

    theirs = _card(tmp_path, st_losses, loss_name).splitlines()
    ours = _card(tmp_path, embedplug.losses, loss_name).splitlines()
    changed = [line for line in difflib.ndiff(theirs, ours) if line[:1] in "+-"]
    link = f"https://sbert.net/docs/package_reference/sentence_transformer/losses.html#{loss_name.lower()}"
    assert len(changed) == 2, changed
    assert changed[0] == f"- * Loss: [<code>{loss_name}</code>]({link}) with these parameters:"
    assert changed[1].startswith("+ * Loss: <code>embedplug.losses.")
    assert f"drop-in for sentence-transformers' [<code>{loss_name}</code>]({link})" in changed[1]
    assert changed[1].endswith(" in embedplug) with these parameters:")


def test_only_embedplug_drop_ins_are_annotated():
    card = (
        "* Loss: <code>embedplug.losses.batch_hard_triplet.BatchHardTripletLoss</code> with these parameters:\n"
        "* Loss: <code>my_plugin.losses.OwnLoss</code> with these parameters:\n"
        "* Loss: <code>embedplug.losses.custom.NotInSentenceTransformers</code>\n"
        "Text that mentions <code>embedplug.losses.gist_embed.GISTEmbedLoss</code> elsewhere.\n"
    )
    lines = link_embedplug_losses(card).splitlines()
    assert "docs/batch-mining-losses.md" in lines[0] and "#batchhardtripletloss" in lines[0]
    assert lines[1:] == card.splitlines()[1:]
    assert link_embedplug_losses(link_embedplug_losses(card)) == link_embedplug_losses(card)


def test_no_card_no_change(tmp_path):
    assert link_embedplug_losses_in(tmp_path) is False
