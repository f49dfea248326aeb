#!/usr/bin/env bash
# One visit to a GPU host with CUDA but no network: build in place against the torch already
# installed there, run the GPU tests, memcheck the CUDA C++ kernels, run the benchmarks, and
# copy logs + JSON + PNG into the folder given as the first argument.
#   usage: bash bench/gpu_check.sh OUT_DIR [bench size: small|full (default full)]
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [small|full]}
size=${2:-full}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
PY=${PYTHON:-python3}
failed=()
step() {  # step NAME CMD...: run, log to $out/NAME.log, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  if "$@" > "$out/$name.log" 2>&1; then echo "    ok"; else echo "    FAILED (tail of $name.log):"; tail -n 30 "$out/$name.log"; failed+=("$name"); fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
nvcc --version | tail -n 1

# Editable install maps vidcore.kernels -> kernels/ and vidcore.bench -> bench/. An old
# setuptools (< 77) cannot read pyproject.toml's license field: then build in place and link
# the two source folders into the package instead.
if ! step build $PY -m pip install --no-build-isolation --no-deps -e .; then
  failed=()
  ln -sfn ../kernels vidcore/kernels && ln -sfn ../bench vidcore/bench
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  step build_inplace $PY setup.py build_ext --inplace
fi
step info $PY -m vidcore.profiler.cli info
step gpu_tests $PY -m pytest tests -m "gpu or cuda_ext" -q -rs
step all_tests_on_cuda $PY -m pytest tests -q -x -rs -p no:cacheprovider
if command -v compute-sanitizer > /dev/null; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest tests -m cuda_ext -q -x
fi
step bench $PY -m vidcore.profiler.cli bench --size "$size" --out "$out"
cat "$out/bench.log" | tail -n 80

echo "=== summary: ${#failed[@]} failed step(s): ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
