"""Drop-in GISTEmbedLoss: parity with sentence-transformers 6.2 on embeddings (every option), ties,
self-guided filtering, constructor contract; real-model parity is in the slow tests."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings
from unittest import mock

import pytest
import torch
from _support import bundled_model_path

import embedplug
from embedplug.functional import gist_embed_loss
from embedplug.losses import GISTEmbedLoss

st_gist_module = pytest.importorskip("sentence_transformers.sentence_transformer.losses.gist_embed")
STGISTEmbedLoss = st_gist_module.GISTEmbedLoss


def st_gist_loss(student_columns, guide_columns, **options):
    """sentence-transformers' GISTEmbedLoss.forward on given embeddings (its models bypassed)."""
    loss = STGISTEmbedLoss.__new__(STGISTEmbedLoss)
    torch.nn.Module.__init__(loss)
    settings = dict(temperature=0.01, margin_strategy="absolute", margin=0.0, contrast_anchors=True, contrast_positives=True)
    settings.update(options)
    for name, value in settings.items():
        setattr(loss, name, value)
    loss.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
    loss.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    loss.gather_across_devices = False
    loss.must_retokenize = False
    student, guide = object(), object()
    loss.__dict__.update(model=student, guide=guide)
    with mock.patch.object(st_gist_module, "embed_columns", lambda model, _: list(student_columns if model is student else guide_columns)):
        return loss.forward([{}] * len(student_columns), None)


def losses_and_grads(student_columns, guide_columns, **options):
    student_columns = [column.detach().requires_grad_() for column in student_columns]
    theirs = st_gist_loss(student_columns, guide_columns, **options)
    their_grads = torch.autograd.grad(theirs, student_columns)
    anchor, positive, *negatives = student_columns
    guide_anchor, guide_positive, *guide_negatives = guide_columns
    ours = gist_embed_loss(
        anchor, positive, negatives, guide_anchor=guide_anchor, guide_positive=guide_positive,
        guide_negatives=guide_negatives, **options,
    )
    our_grads = torch.autograd.grad(ours, student_columns)
    return (ours, our_grads), (theirs, their_grads)


def assert_parity(ours, theirs, rtol=1e-5, temperature=0.01):
    (loss, grads), (expected_loss, expected_grads) = ours, theirs
    # loss = lse - target logit, both of size ~1/temperature: near-zero losses keep only the
    # absolute precision of those logits (a few ulps), in sentence-transformers as here.
    logit_ulps = 8 * torch.finfo(loss.dtype).eps / temperature
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=logit_ulps)
    for grad, expected in zip(grads, expected_grads):
        # Relative to the gradient's scale (single entries are sums that can cancel to ~0), and no
        # tighter than the logits' precision allows: softmax - 1 at the target cancels the same way.
        atol = max(rtol * expected.abs().max().item(), logit_ulps / expected.shape[0])
        torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol)


def make_columns(n, columns, generator, dim=32, guide_dim=16):
    student = [torch.randn(n, dim, generator=generator) for _ in range(columns)]
    guide = [torch.randn(n, guide_dim, generator=generator) for _ in range(columns)]
    # Guide positives near their anchors so the filter has work to do.
    guide[1] = guide[0] + 0.7 * guide[1]
    return student, guide


OPTIONS = [
    {},
    {"margin": 0.1},
    {"margin": -0.05},
    {"margin_strategy": "relative", "margin": 0.2},
    {"margin_strategy": "relative", "margin": 0.0},
    {"contrast_anchors": False},
    {"contrast_positives": False},
    {"contrast_anchors": False, "contrast_positives": False, "margin": 0.3},
    {"temperature": 0.05},
    {"temperature": 1.0, "margin_strategy": "relative", "margin": 0.5},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("columns", [2, 3])
@pytest.mark.parametrize("n", [1, 16])
def test_parity_with_sentence_transformers(options, columns, n):
    student, guide = make_columns(n, columns, torch.Generator().manual_seed(n + columns))
    ours, theirs = losses_and_grads(student, guide, **options)
    assert_parity(ours, theirs, temperature=options.get("temperature", 0.01))


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[3], OPTIONS[7]], ids=["defaults", "relative", "no_contrast"])
def test_parity_across_several_tiles(options):
    # 300 rows span two 256-row kernel tiles in both directions.
    student, guide = make_columns(300, 3, torch.Generator().manual_seed(300))
    ours, theirs = losses_and_grads(student, guide, **options)
    assert_parity(ours, theirs, temperature=options.get("temperature", 0.01))


@pytest.mark.parametrize("options", [{}, {"margin": 0.1}, {"margin": -0.05}, {"margin_strategy": "relative"}])
def test_parity_when_anchors_equal_their_positives(options):
    # Half the rows have anchor == positive (student and guide): their self-pairs in the
    # anchor-anchor and positive-positive blocks tie with the threshold exactly.
    generator = torch.Generator().manual_seed(2)
    student, guide = make_columns(64, 3, generator)
    student[1][:32] = student[0][:32]
    guide[1][:32] = guide[0][:32]
    ours, theirs = losses_and_grads(student, guide, temperature=0.5, **options)
    assert_parity(ours, theirs, temperature=0.5)


def test_parity_when_every_anchor_equals_its_positive():
    generator = torch.Generator().manual_seed(3)
    student, guide = make_columns(300, 2, generator)
    student[1], guide[1] = student[0].clone(), guide[0].clone()
    (loss, _), (expected, _) = losses_and_grads(student, guide)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("st_version, logits_at_the_top", [("6.2", 3), ("6.3", 1)])
def test_every_anchor_equal_to_its_positive_in_each_release(st_version, logits_at_the_top):
    # The positive, the anchor's own anchor-anchor entry and the positive's own positive-positive
    # entry all score 1 / temperature. At margin 0 the guide keeps the self entries (they tie with
    # the threshold): 6.2 softmaxes over all three (ln 3 per row), 6.3 always masks the self
    # entries, leaving the positive alone at the top (ln 1); the rest is ~exp(-70).
    generator = torch.Generator().manual_seed(3)
    student, guide = make_columns(300, 2, generator)
    loss = gist_embed_loss(student[0], student[0].clone(), guide_anchor=guide[0], guide_positive=guide[0].clone(),
                           st_version=st_version)
    torch.testing.assert_close(loss, torch.tensor(float(logits_at_the_top)).log(), rtol=1e-4, atol=1e-6)


def test_float64_parity_is_tight():
    student, guide = make_columns(100, 3, torch.Generator().manual_seed(4))
    student = [column.double() for column in student]
    guide = [column.double() for column in guide]
    ours, theirs = losses_and_grads(student, guide, margin=0.1)
    assert_parity(ours, theirs, rtol=1e-10)


def test_gathered_layout_with_offset_matches_local_rows():
    # Rows of one "rank" at offset 16 of 48 gathered positives: same loss as sentence-transformers
    # computes with its offset (reproduced by slicing and reordering by hand here).
    generator = torch.Generator().manual_seed(5)
    student, guide = make_columns(48, 3, generator)
    anchor = student[0][16:32]
    loss = gist_embed_loss(
        anchor, student[1], [student[2]], guide_anchor=guide[0][16:32], guide_positive=guide[1],
        guide_negatives=[guide[2]], offset=16, margin=0.05,
    )
    order = torch.cat([torch.arange(16, 32), torch.arange(0, 16), torch.arange(32, 48)])
    # Move the local rows first and drop the other ranks' anchors: the permutation-invariant softmax
    # sees the same candidates, and anchors are never gathered.
    reference = gist_embed_loss(
        anchor, student[1][order], [student[2]], guide_anchor=guide[0][16:32], guide_positive=guide[1][order],
        guide_negatives=[guide[2]], margin=0.05,
    )
    torch.testing.assert_close(loss, reference)


def test_self_guided_uses_the_students_detached_similarities():
    generator = torch.Generator().manual_seed(6)
    student, _ = make_columns(40, 3, generator)
    student = [column.requires_grad_() for column in student]
    self_guided = gist_embed_loss(student[0], student[1], [student[2]], margin=0.05)
    grads = torch.autograd.grad(self_guided, student)
    detached = [column.detach() for column in student]
    guided = gist_embed_loss(
        student[0], student[1], [student[2]], guide_anchor=detached[0], guide_positive=detached[1],
        guide_negatives=[detached[2]], margin=0.05,
    )
    torch.testing.assert_close(self_guided, guided)
    for grad, expected in zip(grads, torch.autograd.grad(guided, student)):
        torch.testing.assert_close(grad, expected)


def test_self_guided_loss_module_without_a_guide_model():
    generator = torch.Generator().manual_seed(7)
    student, _ = make_columns(20, 2, generator)
    loss = GISTEmbedLoss(torch.nn.Linear(2, 2), guide=None, margin=0.1)
    assert loss.guide is None and not loss.must_retokenize
    torch.testing.assert_close(
        loss.compute_loss_from_embeddings(student), gist_embed_loss(student[0], student[1], margin=0.1)
    )


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: gist_embed_loss(torch.randn(4, 3), torch.randn(4, 5)), ValueError, "every column"),
        (lambda: gist_embed_loss(torch.randn(4, 3), torch.randn(6, 3)), ValueError, "local rows"),
        (lambda: gist_embed_loss(torch.randn(4, 3), torch.randn(4, 3), [torch.randn(8, 3)]), ValueError, "negative column"),
        (lambda: gist_embed_loss(torch.randn(4, 3), torch.randn(4, 3), margin_strategy="soft"), ValueError, "margin_strategy"),
        (
            lambda: gist_embed_loss(torch.randn(4, 3), torch.randn(4, 3), guide_anchor=torch.randn(4, 2)),
            ValueError,
            "guide's embeddings",
        ),
        (lambda: gist_embed_loss(torch.randn(4), torch.randn(4)), ValueError, "2-D"),
        (lambda: gist_embed_loss(torch.randint(0, 2, (4, 3)), torch.randn(4, 3)), TypeError, "floating"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


class _TokenizedModel(torch.nn.Module):
    """The attributes GISTEmbedLoss's constructor reads from a SentenceTransformer."""

    def __init__(self, tokenizer, max_seq_length):
        super().__init__()
        self.tokenizer, self.max_seq_length = tokenizer, max_seq_length
        self.layer = torch.nn.Linear(2, 2)

    def __getitem__(self, index):
        return self.layer


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()))


def test_constructor_attributes_config_and_citation_match(tokenizer):
    ours_signature = inspect.signature(GISTEmbedLoss.__init__).parameters
    theirs_signature = inspect.signature(STGISTEmbedLoss.__init__).parameters
    assert list(ours_signature) == list(theirs_signature)
    for name in list(theirs_signature)[3:]:
        assert ours_signature[name].default == theirs_signature[name].default, name
    model, guide = _TokenizedModel(tokenizer, 128), _TokenizedModel(tokenizer, 64)
    options = dict(temperature=0.05, margin_strategy="relative", margin=0.1, contrast_positives=False)
    ours, theirs = GISTEmbedLoss(model, guide, **options), STGISTEmbedLoss(model, guide, **options)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation
    # A guide with a shorter max length must see re-tokenised text, as in sentence-transformers.
    assert ours.must_retokenize is theirs.must_retokenize is True
    assert ours.tokenizer is tokenizer
    assert GISTEmbedLoss(model, _TokenizedModel(tokenizer, 128)).must_retokenize is False
    assert ours.model is model and ours.guide is guide


def test_constructor_errors_match(tokenizer):
    model = _TokenizedModel(tokenizer, 128)
    with pytest.raises(ValueError, match="margin_strategy must be 'absolute' or 'relative'"):
        GISTEmbedLoss(model, model, margin_strategy="soft")
    with pytest.raises(ValueError, match="tokenizer attribute"):
        GISTEmbedLoss(model, torch.nn.Linear(2, 2))
    no_pretrained = _TokenizedModel(object(), 128)
    with pytest.raises(ValueError, match="PreTrainedTokenizer"):
        GISTEmbedLoss(model, no_pretrained)


def test_backend_info_reports_the_fused_kernel():
    info = GISTEmbedLoss(torch.nn.Linear(2, 2), None).backend_info()
    expected = "fused" if embedplug.backend_info()["ops"]["masked_infonce"]["cpu"]["implementation"] == "fused" else "reference"
    assert info["implementation"] == expected


def test_registered_as_builtin_plugins():
    for name in ("GISTEmbedLoss", "CachedGISTEmbedLoss", "MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"):
        assert embedplug.get_loss(name) is getattr(embedplug.losses, name)


# ----- a guide with NaN / Inf rows: warned once, then trained through as sentence-transformers does
# (every guide similarity involving such a row is NaN, and `similarity > threshold` drops nothing on NaN).


def guide_with_bad_rows(bad_rows, n=16, columns=3, seed=3):
    student, guide = make_columns(n, columns, torch.Generator().manual_seed(seed))
    for (column, row), value in zip(bad_rows, [float("nan"), float("inf"), float("-inf")] * len(bad_rows)):
        guide[column][row, 2] = value
    return student, guide


def test_a_guide_with_nan_or_inf_rows_warns_once_and_matches_sentence_transformers():
    # Bad rows in the anchors', the positives' and the negatives' guide columns (not row 0: see below).
    student, guide = guide_with_bad_rows([(0, 5), (1, 9), (2, 3)])
    with pytest.warns(RuntimeWarning, match="NaN or Inf.*drop no candidate, as in sentence-transformers"):
        # (Negative margins are left to the version tests: sentence-transformers 6.3 masks self-pairs there.)
        for options in ({}, {"margin": 0.05}, {"margin_strategy": "relative", "margin": 0.1}):
            ours, theirs = losses_and_grads(student, guide, **options)
            assert torch.isfinite(theirs[0])
            assert_parity(ours, theirs, rtol=1e-4)
    loss = GISTEmbedLoss(None, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            loss.compute_loss_from_embeddings(student, guide_embeddings=guide)
    assert len([w for w in caught if "NaN or Inf" in str(w.message)]) == 1


def test_a_non_finite_guide_row_zero_and_the_reference_match_sentence_transformers():
    student, guide = guide_with_bad_rows([(0, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours, theirs = losses_and_grads(student, guide)
    assert_parity(ours, theirs, rtol=1e-4)
    # The pure-torch reference (no extension), on the cases the fused kernel gets right.
    script = (
        "import sys, warnings, torch; sys.path[:0] = ['tests', 'tests/losses']; warnings.simplefilter('ignore')\n"
        "from test_gist_embed_loss import guide_with_bad_rows, losses_and_grads\n"
        "student, guide = guide_with_bad_rows([(0, 5), (1, 9), (2, 3)])\n"
        "(loss, _), (expected, _) = losses_and_grads(student, guide)\n"
        "print(abs(loss.item() - expected.item()))\n"
    )
    environment = {**os.environ, "EMBEDPLUG_DISABLE_EXT": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 1e-4
