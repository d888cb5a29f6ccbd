"""EMBEDPLUG_DISABLE_EXT=1 makes every op run its pure-torch reference, reports it, and gives the
fused kernels' numbers: one fresh process with the extension, one without, every op's loss in each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from embedplug import _extension

# op name (as embedplug.backend_info() reports it) -> the functional loss that runs on it.
CASES = {
    "batch_hard_mining": "F.batch_hard_triplet_loss(x, y)",
    "semi_hard_triplet_loss_forward": "F.batch_semi_hard_triplet_loss(x, y)",
    "batch_all_triplet_loss_forward": "F.batch_all_triplet_loss(x, y)",
    "pair_rule_forward": "F.supervised_contrastive_loss(x, y) + F.multi_similarity_loss(x, y) + F.circle_loss(x, y)",
    "masked_infonce_mean": "F.gist_embed_loss(x[:50], x[50:], guide_anchor=g[:50], guide_positive=g[50:], margin=0.05, temperature=0.05)",
}

SCRIPT = """
import json, torch, embedplug
import embedplug.functional as F
results = {}
for op, expression in %r.items():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=generator, requires_grad=True)
    y = torch.arange(100) // 4
    g = torch.randn(100, 4, generator=generator)
    loss = eval(expression)
    loss.backward()
    info = embedplug.backend_info()["ops"][op]["cpu"]
    results[op] = {"impl": info["implementation"], "loss": loss.item(), "grad": x.grad.tolist()}
print(json.dumps(results))
""" % (CASES,)


@pytest.fixture(scope="module")
def runs():
    """{"0": results with the extension allowed, "1": results with it disabled}."""
    results = {}
    for disabled in ("0", "1"):
        env = {**os.environ, "EMBEDPLUG_DISABLE_EXT": disabled}
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
        results[disabled] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("op", list(CASES))
def test_forced_fallback_reports_reference_and_gives_same_numbers(runs, op):
    fused, reference = runs["0"][op], runs["1"][op]
    assert reference["impl"] == "reference"
    assert fused["impl"] == ("fused" if _extension.STATUS.loaded else "reference")
    assert fused["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(fused["grad"]), torch.tensor(reference["grad"]), rtol=1e-4, atol=1e-6)
