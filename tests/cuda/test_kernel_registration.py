"""Every op declared in csrc/embedplug.cpp has a CPU kernel, and a CUDA kernel when the build has CUDA.

`make cuda-build` runs the same check against the CUDA build (scripts/check_kernels.py) in CI.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from _support import requires_extension

from embedplug import _extension
from embedplug.ops import backend_info

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "check_kernels.py"
_spec = importlib.util.spec_from_file_location("check_kernels", _SCRIPT)
check_kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_kernels)


def test_schema_file_parses_to_every_declared_op(tmp_path):
    schema = tmp_path / "schema.cpp"
    schema.write_text(
        'TORCH_LIBRARY(embedplug, m) {\n  m.def("first(Tensor x) -> Tensor");\n'
        '  m.def(\n      "_second_backward(Tensor g, "\n      "Tensor x) -> Tensor");\n}\n'
    )
    assert check_kernels.schema_ops(schema) == ["first", "_second_backward"]
    assert "batch_hard_mining" in check_kernels.schema_ops()


@requires_extension
def test_every_schema_op_has_a_cpu_kernel():
    assert check_kernels.missing_kernels(check_kernels.schema_ops(), "CPU") == []


@requires_extension
@pytest.mark.skipif(not _extension.STATUS.build_info.get("cuda_kernels"), reason="extension built without CUDA kernels")
def test_every_schema_op_has_a_cuda_kernel():
    assert check_kernels.missing_kernels(check_kernels.schema_ops(), "CUDA") == []


@requires_extension
def test_backend_info_reports_every_schema_op():
    reported = set(backend_info()["ops"])
    public = {op for op in check_kernels.schema_ops() if not op.startswith("_")}
    assert public <= reported
