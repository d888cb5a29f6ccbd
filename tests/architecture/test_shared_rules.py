"""Every function of the shared rule headers (csrc/*_rules.h) must run in the CPU suite.

The CUDA kernels have never run on a GPU; what makes them trustworthy is that their per-element and
per-row math is the same code the CPU kernels run here. A rule that only CUDA code calls escapes that:
this test parses the headers, builds the call graph among the rules, and fails on any rule that no
CPU source (csrc/cpu/, and the host headers the CPU kernels include) reaches.
"""

from __future__ import annotations

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
RULE_HEADERS = sorted(CSRC.glob("*_rules.h"))
# Sources compiled into the CPU kernels besides the rule headers themselves.
CPU_SOURCES = sorted((CSRC / "cpu").glob("*")) + [
    path for path in CSRC.glob("*.h") if not path.name.endswith("_rules.h")
]
CUDA_SOURCES = sorted((CSRC / "cuda").glob("*"))

def strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _matching(text: str, start: int, open_char: str, close_char: str) -> int:
    depth = 0
    for index in range(start, len(text)):
        depth += (text[index] == open_char) - (text[index] == close_char)
        if depth == 0:
            return index
    raise ValueError("unbalanced")


def _rule_functions():
    """(name, body span) of every C10_HOST_DEVICE function (member functions included) per rule header."""
    for header in RULE_HEADERS:
        text = strip_comments(header.read_text())
        for match in re.finditer(r"C10_HOST_DEVICE\b", text):
            signature_open = text.index("(", match.end())
            name = re.findall(r"(\w+)\s*$", text[match.end():signature_open])[0]
            body_open = text.index("{", _matching(text, signature_open, "(", ")"))
            yield header, text, name, (match.start(), _matching(text, body_open, "{", "}") + 1)


def rule_bodies() -> dict[str, str]:
    """name -> body of every C10_HOST_DEVICE function in the rule headers."""
    bodies: dict[str, str] = {}
    for _header, text, name, (start, end) in _rule_functions():
        bodies[name] = bodies.get(name, "") + text[start:end]
    return bodies


def text_outside_rules() -> str:
    """The rule headers without their functions: struct member initialisers (``maximum =
    -rule_infinity<scalar_t>()``) run wherever the struct is used, which the CPU kernels do."""
    kept = {}
    for header, text, _name, (start, end) in _rule_functions():
        kept.setdefault(header, list(text))
        kept[header][start:end] = [" "] * (end - start)
    return "".join("".join(chars) for chars in kept.values())


def calls(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){name}\s*(<[^;(){{}}]*>)?\s*\(", text) is not None


def rules_reached_from(sources: list[Path], bodies: dict[str, str], extra_text: str = "") -> set[str]:
    text = extra_text + "".join(strip_comments(path.read_text()) for path in sources if path.is_file())
    reached = {name for name in bodies if calls(name, text)}
    frontier = set(reached)
    while frontier:
        body = "".join(bodies[name] for name in frontier)
        frontier = {name for name in bodies if name not in reached and calls(name, body)}
        reached |= frontier
    return reached


def test_the_scanner_sees_the_rule_headers():
    bodies = rule_bodies()
    assert len(bodies) > 60 and {"finish_anchor", "versus_term", "guide_threshold", "masked_logit", "keep_max"} <= set(bodies)


def test_every_rule_is_run_by_a_cpu_kernel():
    bodies = rule_bodies()
    on_cpu = rules_reached_from(CPU_SOURCES, bodies, text_outside_rules())
    cuda_only = set(bodies) - on_cpu
    assert cuda_only == set(), "rules no CPU kernel runs (the CPU suite cannot check them)"


