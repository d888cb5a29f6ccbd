"""The documentation build's own checks (scripts/docs_hooks.py): they gate CI, so they must find what they claim."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("griffe")

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO_ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_hooks = _load_hooks()


def _write_package(root: Path, name: str, files: dict[str, str]) -> None:
    package = root / name
    package.mkdir()
    for filename, source in files.items():
        (package / filename).write_text(textwrap.dedent(source))


def test_reports_every_public_object_without_a_docstring(tmp_path):
    _write_package(
        tmp_path,
        "sample_pkg",
        {
            "__init__.py": '''
                """A package."""
                from sample_pkg.impl import Documented, Undocumented, bare_function

                __all__ = ["Documented", "Undocumented", "bare_function"]
            ''',
            "impl.py": '''
                """Implementations."""
                import torch


                class Base:
                    """A base."""

                    def step(self):
                        """Documented once, here."""


                class Documented(Base):
                    """Documented."""

                    def step(self):
                        return 1

                    def helper(self):
                        return 2

                    def _private(self):
                        return 3


                class Undocumented(torch.nn.Module):
                    def forward(self, x):
                        return x

                    def extra(self):
                        return x


                def bare_function(x):
                    return x


                def _private_function():
                    return None
            ''',
        },
    )
    missing = docs_hooks.missing_docstrings("sample_pkg", search_path=tmp_path)
    assert sorted(missing) == [
        "sample_pkg.impl.Documented.helper",  # no docstring and no base that documents it
        "sample_pkg.impl.Undocumented",
        "sample_pkg.impl.Undocumented.extra",  # forward is nn.Module's contract; extra is not
        "sample_pkg.impl.bare_function",
    ]


def test_a_fully_documented_module_passes(tmp_path):
    _write_package(tmp_path, "clean_pkg", {"__init__.py": '"""Clean."""\n\ndef f():\n    """Does f."""\n'})
    assert docs_hooks.missing_docstrings("clean_pkg", search_path=tmp_path) == []


def test_the_documented_api_has_every_docstring():
    api_pages = sorted((REPO_ROOT / "docs" / "api").glob("*.md"))
    assert api_pages
    for page in api_pages:
        for path in docs_hooks._DIRECTIVE.findall(page.read_text()):
            assert docs_hooks.missing_docstrings(path) == [], page.name


def test_grouped_parameters_become_one_entry_each():
    docstring = textwrap.dedent(
        """\
        Summary.

        Args:
            model, guide, temperature,
            margin: as in GISTEmbedLoss.
            anchor, positive (Tensor): [N, D] embeddings,
                one row per text.
            scale: logits are ``scale * similarity``.

        Returns:
            loss, count: not parameters, left alone.
        """
    )
    assert docs_hooks.split_grouped_parameters(docstring) == textwrap.dedent(
        """\
        Summary.

        Args:
            model: as in GISTEmbedLoss.
            guide: as in GISTEmbedLoss.
            temperature: as in GISTEmbedLoss.
            margin: as in GISTEmbedLoss.
            anchor (Tensor): [N, D] embeddings,
                one row per text.
            positive (Tensor): [N, D] embeddings,
                one row per text.
            scale: logits are ``scale * similarity``.

        Returns:
            loss, count: not parameters, left alone.
        """
    )


def test_sphinx_roles_render_as_code():
    assert docs_hooks._SPHINX_ROLE.sub(
        lambda match: f"`{match.group(1)}`", "See :class:`~embedplug.losses.GISTEmbedLoss` and :func:`get_loss`."
    ) == "See `embedplug.losses.GISTEmbedLoss` and `get_loss`."
