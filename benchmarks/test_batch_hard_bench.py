"""BatchHardTripletLoss forward+backward: embedplug fused vs reference vs sentence-transformers vs
pytorch-metric-learning, with one torch.mm (the GEMM floor) in the same run.

    make bench                       # or: pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import pytest

from embedplug.bench import batch_hard_cases
from embedplug.bench.memory import peak_extra_memory_bytes

IMPLEMENTATIONS = batch_hard_cases.available_implementations()


@pytest.mark.parametrize("dim", [384, 768])
@pytest.mark.parametrize("n", [1024, 4096, 8192])
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_batch_hard_forward_backward(benchmark, record, implementation, n, dim):
    if implementation == "embedplug reference" and n > 4096:
        pytest.skip("the N x N reference is the sentence-transformers algorithm; measured up to N=4096")
    benchmark.group = f"BatchHardTripletLoss N={n} D={dim}"
    fn = IMPLEMENTATIONS[implementation]
    inputs = batch_hard_cases.make_inputs(n, dim)
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.pedantic(fn, args=(inputs,), rounds=3, warmup_rounds=0, iterations=1)
    record("BatchHardTripletLoss", implementation, n, dim, benchmark, peak)
