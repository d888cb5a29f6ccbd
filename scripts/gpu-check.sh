#!/usr/bin/env bash
# The GPU check, for a bare GPU machine with no network (see README, "What is verified where"):
#   scripts/gpu-check.sh [OUT_DIR]          (default OUT_DIR: gpu-results)
# 1. a venv on top of the machine's own torch (--system-site-packages), with the test packages it
#    lacks installed from the wheels in gpu-wheels/ (`make gpu-wheels` fills that folder; it is ignored
#    by git and travels with the checkout);
# 2. builds embedplug._C in place with its CUDA kernels for this GPU's architecture;
# 3. checks that every op in csrc/embedplug.cpp registered a CUDA kernel;
# 4. runs the CUDA tests (tests/cuda and the CUDA cases of tests/ops);
# 5. runs the GPU benchmark (benchmarks/gpu_benchmark.py).
# Writes OUT_DIR/gpu-check.log, OUT_DIR/gpu-benchmark.json, OUT_DIR/pytest-cuda.xml and OUT_DIR/summary.json.
# Every step has its own time limit; the whole script stays inside 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu-check.log") 2>&1

PYTHON=${PYTHON:-python3}
VENV=${GPU_VENV:-.venv-gpu}
WHEELS=${GPU_WHEELS:-gpu-wheels}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
declare -A status

echo "== gpu-check $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"

# 1. environment
if [ ! -x "$VENV/bin/python" ]; then
  timeout 60 "$PYTHON" -m venv --system-site-packages "$VENV" || { echo "cannot create $VENV"; exit 1; }
fi
PY="$VENV/bin/python"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [ -d "$WHEELS" ]; then
  # The full set first (pinned sentence-transformers for the parity benchmark), then what the tests need.
  timeout 120 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
      pytest hypothesis pluggy expecttest "sentence-transformers>=6.2,<6.4" \
    || timeout 60 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" pytest hypothesis pluggy expecttest \
    || echo "warning: could not install the test wheels from $WHEELS"
else
  echo "warning: no $WHEELS folder (run 'make gpu-wheels' before copying the checkout); using what is installed"
fi
"$PY" -c "import sentence_transformers as s; print('sentence-transformers', s.__version__)" 2>/dev/null \
  || echo "sentence-transformers: not importable (the benchmark skips it)"
status[environment]=$(elapsed)

# 2. build in place for this GPU
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
export CUDA_HOME
arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" 2>/dev/null || echo "9.0")
cu_include=$("$PY" -c "import sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib']) / 'nvidia' / 'cu13' / 'include'; print(p if p.is_dir() else '')")
[ -n "$cu_include" ] && export CPATH="$cu_include${CPATH:+:$CPATH}"
echo "== build: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$arch CPATH=${CPATH:-}"
if FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-16} timeout 240 "$PY" setup.py --quiet build_ext --inplace; then
  status[build]=ok
else
  status[build]=failed
fi
echo "build finished at $(elapsed) s: ${status[build]}"

# 3. registration
if PYTHONPATH=$PWD timeout 60 "$PY" scripts/check_kernels.py --dispatch-key CPU --dispatch-key CUDA; then
  status[registration]=ok
else
  status[registration]=failed
fi

# 4. CUDA tests
PYTHONPATH=$PWD timeout 150 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest-cuda.xml" \
  tests/cuda "tests/ops" -k "cuda or Cuda or CUDA or test_cuda_kernels or test_kernel_registration"
status[tests]=$?
echo "tests finished at $(elapsed) s: exit ${status[tests]}"

# 5. benchmark, with what is left of the 8 minutes
left=$(( 470 - $(elapsed) ))
if [ "$left" -gt 30 ]; then
  PYTHONPATH=$PWD timeout "$left" "$PY" benchmarks/gpu_benchmark.py --json "$OUT/gpu-benchmark.json" --budget-s $(( left - 30 ))
  status[benchmark]=$?
else
  status[benchmark]="skipped: no time left"
fi

"$PY" - "$OUT/summary.json" <<EOF
import json, sys
json.dump({"build": "${status[build]}", "registration": "${status[registration]}", "tests_exit": "${status[tests]}",
           "benchmark": "${status[benchmark]}", "wall_s": $(elapsed)}, open(sys.argv[1], "w"), indent=2)
EOF
echo "== gpu-check done in $(elapsed) s: build ${status[build]}, registration ${status[registration]}, tests exit ${status[tests]}, benchmark ${status[benchmark]}"
[ "${status[build]}" = ok ] && [ "${status[registration]}" = ok ] && [ "${status[tests]}" = 0 ]
