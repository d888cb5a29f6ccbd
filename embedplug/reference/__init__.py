"""Pure-torch references: the CPU/CUDA fallback when the extension is absent, and the oracle in tests.

Each function reproduces sentence-transformers' numerics (same formulas, same tie rules) on full
N x N matrices; the fused kernels must match them.
"""
