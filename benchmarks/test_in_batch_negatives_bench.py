"""GISTEmbedLoss and MultipleNegativesRankingLoss forward+backward: embedplug fused vs reference vs
sentence-transformers, with the torch.mm calls an exact method cannot avoid (the GEMM floor) in the same run.

    pytest benchmarks/test_in_batch_negatives_bench.py --benchmark-enable
"""

from __future__ import annotations

import pytest

from embedplug.bench import in_batch_negatives_cases as cases
from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.bench.peers import SENTENCE_TRANSFORMERS

GIST = cases.available(cases.GIST_IMPLEMENTATIONS)
MNRL = cases.available(cases.MNRL_IMPLEMENTATIONS)
MNRL_VARIANTS = {name: cases.available(cases.mnrl_implementations(name)) for name in cases.MNRL_OPTION_SETS}


def _run(benchmark, record, loss, implementation, fn, n, dim):
    benchmark.group = f"{loss} N={n} D={dim}"
    inputs = cases.make_inputs(n, dim)
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.pedantic(fn, args=(inputs,), rounds=1 if n >= 4096 or "sentence" in implementation else 3, iterations=1)
    record(loss, implementation, n, dim, benchmark, peak)


@pytest.mark.parametrize("n", [1024, 4096])
@pytest.mark.parametrize("implementation", list(GIST))
def test_gist_forward_backward(benchmark, record, implementation, n):
    if implementation in (SENTENCE_TRANSFORMERS, "embedplug reference") and n > 1024:
        pytest.skip("the N x N x D broadcast of sentence-transformers needs ~15 GB at N=1024 already")
    _run(benchmark, record, "GISTEmbedLoss", implementation, GIST[implementation], n, 384)


@pytest.mark.parametrize("implementation", list(MNRL))
def test_mnrl_forward_backward(benchmark, record, implementation):
    _run(benchmark, record, "MultipleNegativesRankingLoss", implementation, MNRL[implementation], 8192, 384)


@pytest.mark.parametrize("implementation", list(MNRL))
@pytest.mark.parametrize("option_set", ["symmetric", "hardness"])
def test_mnrl_options_forward_backward(benchmark, record, option_set, implementation):
    # symmetric: MultipleNegativesSymmetricRankingLoss (per-direction query-to-doc + doc-to-query);
    # hardness: in-batch-negative hardness weighting, strength 9.
    fn = MNRL_VARIANTS[option_set][implementation]
    _run(benchmark, record, f"MultipleNegativesRankingLoss ({option_set})", implementation, fn, 8192, 384)
