#!/usr/bin/env bash
# Every GPU check of the project in one prepared run (for a lent GPU machine with no network):
# installs the workspace from wheels carried in .gpuwheels/ (fill it here first:
#   pip download -d .gpuwheels --no-deps diffusers==0.42.1 hatchling editables pathspec trove-classifiers \
#       annotated-types typing-inspection importlib_metadata pydantic
#   pip download -d .gpuwheels --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 pydantic-core
# ), then runs the gpu-marked tests and the bench/gpu_*.py scripts, each under
# its own time cap, writing one log per step into $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() {  # step NAME SECONDS CMD...
  local name=$1 cap=$2; shift 2
  echo "== $name (cap ${cap}s)"; local t0=$SECONDS
  timeout "$cap" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s"; tail -n 40 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -m pip install -q --no-index --find-links .gpuwheels hatchling editables pydantic diffusers==0.42.1 >"$OUT/install.log" 2>&1
pkgs=(-e core -e hub); for p in plugins/*/; do pkgs+=(-e "$p"); done
$PY -m pip install -q --no-index --no-deps --no-build-isolation "${pkgs[@]}" >>"$OUT/install.log" 2>&1 || { tail "$OUT/install.log"; exit 1; }
$PY -c "import torch, difflux, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for s in ${STEPS:-tests optimize offload attention}; do
  case $s in
    tests) step gpu_tests "${CAP_TESTS:-110}" $PY -m pytest -q -m gpu -p no:cacheprovider core/tests plugins ;;
    models) step gpu_models "${CAP_MODELS:-90}" $PY bench/gpu_models.py --iters 10 ;;
    optimize) step gpu_optimize "${CAP_OPT:-215}" $PY bench/gpu_optimize.py --budget 190 ;;
    offload) step gpu_offload "${CAP_OFFLOAD:-90}" $PY bench/gpu_offload.py ;;
    attention) step gpu_attention "${CAP_ATTN:-70}" $PY bench/gpu_attention.py ;;
    ray) step gpu_ray "${CAP_RAY:-150}" $PY bench/gpu_ray.py --jobs 16 ;;  # difflux batch, SD1.5 size (STEPS=ray)
    controlnet) step gpu_controlnet "${CAP_CONTROLNET:-240}" $PY bench/gpu_controlnet.py --steps 20 --repeat 2 ;;
  esac
done
