"""SupConLoss, MultiSimilarityLoss (+ MultiSimilarityMiner) and CircleLoss forward+backward: embedplug
fused vs pytorch-metric-learning, with one torch.mm (the GEMM floor) in the same run.

    pytest benchmarks/test_labelled_contrastive_bench.py --benchmark-enable -k "8192"
    pytest benchmarks/test_labelled_contrastive_bench.py --benchmark-enable -k "memory"   # N = 65,536
"""

from __future__ import annotations

import pytest
import torch

from embedplug.bench import labelled_contrastive_cases as cases
from embedplug.bench.memory import peak_extra_memory_bytes

CASES = [(loss, implementation) for loss in cases.LOSSES for implementation in cases.available_implementations(loss)]


@pytest.mark.parametrize("dim", [384])
@pytest.mark.parametrize("n", [1024, 4096, 8192])
@pytest.mark.parametrize("loss, implementation", CASES)
def test_labelled_contrastive_forward_backward(benchmark, record, loss, implementation, n, dim):
    benchmark.group = f"{loss} N={n} D={dim}"
    fn = cases.LOSSES[loss][implementation]
    inputs = cases.make_inputs(n, dim)
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.pedantic(fn, args=(inputs,), rounds=3, warmup_rounds=0, iterations=1)
    record(loss, implementation, n, dim, benchmark, peak)


@pytest.mark.parametrize("loss", list(cases.LOSSES))
def test_labelled_contrastive_memory_at_65536(benchmark, record, loss):
    """pytorch-metric-learning would need several 65,536^2 float matrices (16 GiB each)."""
    n, dim = 65_536, 384
    fn = cases.available_implementations(loss).get("embedplug fused")
    if fn is None:
        pytest.skip("embedplug._C is not built")
    inputs = cases.make_inputs(n, dim)
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.group = f"{loss} N={n} D={dim}"
    benchmark.pedantic(fn, args=(inputs,), rounds=1, warmup_rounds=0, iterations=1)
    record(loss, "embedplug fused", n, dim, benchmark, peak)
    assert torch.isfinite(inputs.embeddings.grad).all()
    # The budget; the measured peak is a lower bound of what the call allocates.
    assert peak is None or peak <= 2**30
