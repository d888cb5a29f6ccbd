"""MkDocs hooks (mkdocs.yml ``hooks:``) and a griffe extension for the documentation site.

* ``on_page_markdown`` fails a ``--strict`` build when a public object rendered on an API page has no
  docstring: every ``::: module`` line of a page under ``api/`` is walked (its exports when it has
  ``__all__``, else its public members), and each module, class, function and public method without a
  docstring is one warning naming it. A method may go without one when it overrides a documented method
  of an embedplug base class, or implements a method of an outside contract the class follows
  (``EXTERNAL_CONTRACT_METHODS``), whose meaning that contract defines.
* ``DocstringConventions`` (loaded by mkdocstrings' python handler, ``extensions:`` in mkdocs.yml) renders two
  conventions of the docstrings that griffe's Google-style parser does not know: Sphinx roles and
  parameters documented together (see the class).

Both read the sources statically with griffe: nothing is imported, so the build needs neither torch nor the
compiled extension.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import griffe

log = logging.getLogger("mkdocs.hooks.docstrings")

# Methods whose contract is defined outside embedplug (torch, sentence-transformers, transformers): an
# implementation of one needs no docstring of its own.
EXTERNAL_CONTRACT_METHODS = {
    "forward": "torch.nn.Module; for a loss, sentence-transformers' forward(sentence_features, labels)",
    "get_config_dict": "sentence-transformers' loss contract (the model card's loss parameters)",
    "citation": "sentence-transformers' loss contract (the model card's citation)",
    "on_epoch_begin": "transformers' TrainerCallback",
}

_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
_REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _package(name: str, search_path: Path) -> griffe.Object:
    return griffe.load(name, search_paths=[str(search_path)], allow_inspection=False)


def _lookup(path: str, search_path: Path) -> griffe.Object:
    package, _, rest = path.partition(".")
    obj = _package(package, search_path)
    return obj[rest] if rest else obj


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    if not obj.is_alias:
        return obj
    try:
        return obj.final_target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None  # an import from outside embedplug (torch, ...): not ours to document


def _public_members(module: griffe.Object) -> list[griffe.Object]:
    exported = module.exports
    members = []
    for name, member in module.members.items():
        if exported is not None and name not in exported:
            continue
        if exported is None and (name.startswith("_") or member.is_alias):
            continue
        target = _target(member)
        if target is not None and target.kind in (griffe.Kind.CLASS, griffe.Kind.FUNCTION, griffe.Kind.MODULE):
            members.append(target)
    return members


def _documented_in_a_base(cls: griffe.Class, name: str) -> bool:
    for base in cls.mro():
        member = base.members.get(name)
        target = _target(member) if member is not None else None
        if target is not None and target.docstring:
            return True
    return False


def _external_contract(cls: griffe.Class, name: str) -> bool:
    """Whether ``name`` is an outside contract's method and ``cls`` has a base outside embedplug
    (``nn.Module``, ``TrainerCallback``, ...), which griffe leaves unresolved."""
    if name not in EXTERNAL_CONTRACT_METHODS:
        return False
    return any(len(klass.resolved_bases) < len(klass.bases) for klass in [cls, *cls.mro()])


def missing_docstrings(path: str, search_path: Path = _REPOSITORY_ROOT) -> list[str]:
    """Dotted paths of the objects without a docstring that ``path`` (a module, class or function, found
    under ``search_path``) shows: itself, a module's public members, and the public methods of each class."""
    root = _lookup(path, search_path)
    objects = [root, *_public_members(root)] if root.kind is griffe.Kind.MODULE else [root]
    missing: list[str] = []
    for obj in objects:
        if not obj.docstring:
            missing.append(obj.path)
        if obj.kind is not griffe.Kind.CLASS:
            continue
        for name, member in obj.members.items():
            method = _target(member)
            if name.startswith("_") or method is None or method.kind is not griffe.Kind.FUNCTION:
                continue
            if not (method.docstring or _external_contract(obj, name) or _documented_in_a_base(obj, name)):
                missing.append(method.path)
    return missing


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri.startswith("api/"):
        for path in _DIRECTIVE.findall(markdown):
            for name in missing_docstrings(path):
                log.warning("%s: %s has no docstring (shown on the API page without one)", page.file.src_uri, name)
    return markdown


class DocstringConventions(griffe.Extension):
    """Two conventions of embedplug's docstrings that griffe's Google-style parser does not know.

    * Sphinx roles, ``:class:`~embedplug.losses.GISTEmbedLoss```: rendered as inline code (``~`` dropped);
      Markdown would show the role name in front of it.
    * Parameters documented together, ``anchor, positive, negative: [N, D] embeddings`` (the names may
      run over several lines, each but the last ending in a comma): one entry per name, each with the
      shared description; the parser would otherwise report a parameter named ``anchor, positive, negative``.
    """

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = _SPHINX_ROLE.sub(lambda match: f"`{match.group(1)}`", obj.docstring.value)
            obj.docstring.value = split_grouped_parameters(text)


_PARAMETER_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$"
)
_GROUPED_PARAMETERS = re.compile(r"^((?:\*{0,2}\w+\s*,\s*)+\*{0,2}\w+)(\s*\([^)]*\))?\s*:(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_grouped_parameters(text: str) -> str:
    """``text`` with every grouped entry of its parameter sections split into one entry per name."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    item_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _PARAMETER_SECTION.match(line)
        if header:
            section_indent, item_indent = len(header.group(1)), None
        elif section_indent is not None and line.strip():
            if _indent(line) <= section_indent:
                section_indent = None
            else:
                item_indent = _indent(line) if item_indent is None else item_indent
                if _indent(line) == item_indent:
                    head, end = line.strip(), i
                    while head.endswith(",") and end + 1 < len(lines) and _indent(lines[end + 1]) == item_indent:
                        end += 1
                        head = f"{head} {lines[end].strip()}"
                    grouped = _GROUPED_PARAMETERS.match(head)
                    if grouped:
                        continuation = []
                        while end + 1 < len(lines) and lines[end + 1].strip() and _indent(lines[end + 1]) > item_indent:
                            end += 1
                            continuation.append(lines[end])
                        names, annotation, description = grouped.groups()
                        for name in re.split(r"\s*,\s*", names):
                            out.append(f"{' ' * item_indent}{name}{annotation or ''}:{description}")
                            out.extend(continuation)
                        i = end + 1
                        continue
        out.append(line)
        i += 1
    return "\n".join(out)
