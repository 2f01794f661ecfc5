#!/usr/bin/env bash
# GPU check for issue 7 (backends): benches torch on CUDA and every onnxruntime / TensorRT
# provider present, on the tiny model, and writes the reports under bench/results/gpu/.
#
# Standalone on a machine with an NVIDIA GPU and a CUDA build of PyTorch; needs no network
# and no installed comfyc (the repository is put on the path through a symlink shim).
# Uses what is installed: onnxruntime-gpu (ort-cuda, ort-trt) and tensorrt (trt) are
# benched only when importable; the rest is reported as missing.
#
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#   STEPS=20 RUNS=10 bash bench/gpu_check.sh
#   OUT=/tmp/gpu SIZES=64 TUNE_BACKENDS=ort-cpu,torch-cuda bash bench/gpu_check.sh
# OUT: the report folder; SIZES: image sizes (default "64 256"); TUNE_BACKENDS: comfyc tune's
# candidates (default: every backend available here, torch-compile on the CPU included);
# BACKENDS and PRECISIONS: comfyc bench's rows (defaults below); TUNE=0 skips the autotune.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
RUNS=${RUNS:-10}
OUT=${OUT:-$REPO/bench/results/gpu}
SIZES=${SIZES:-64 256}
TUNE_BACKENDS=${TUNE_BACKENDS:-}
TUNE=${TUNE:-1}
PRECISIONS=${PRECISIONS:-fp32,int8}
mkdir -p "$OUT"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
"$PY" - <<'PY'
import importlib, importlib.util
for name in ("torch", "onnxruntime", "tensorrt", "onnx", "onnxscript", "diffusers",
             "transformers", "safetensors", "lark", "PIL", "matplotlib", "numpy"):
    if importlib.util.find_spec(name) is None:
        print(f"  {name:<13} MISSING")
        continue
    module = importlib.import_module(name)
    print(f"  {name:<13} {getattr(module, '__version__', '?')}")
try:
    import torch
    print("  torch.cuda:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    pass
try:
    import onnxruntime
    print("  ort providers:", onnxruntime.get_available_providers())
except ImportError:
    pass
PY

# comfyc without installing it: comfyc.* maps to the top folders (setup.py's layout: pkg/ holds
# the package's own __init__).
SHIM=$(mktemp -d)
mkdir -p "$SHIM/comfyc"
ln -s "$REPO/pkg/__init__.py" "$SHIM/comfyc/__init__.py"
for part in compiler runtime frontends serve cli examples; do
  ln -s "$REPO/$part" "$SHIM/comfyc/$part"
done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
comfyc() { "$PY" -c 'import sys; from comfyc.cli.main import main; sys.exit(main())' "$@"; }

BACKENDS=${BACKENDS:-torch,torch-cuda,torch-compile-cuda,ort-cpu,ort-cuda,ort-trt,trt}
for size in $SIZES; do
  WF="$OUT/txt2img-$size.cfy"
  sed -e "s/steps=20/steps=$STEPS/" -e "s/width=64, height=64/width=$size, height=$size/" \
      examples/txt2img.cfy > "$WF"
  ART="$OUT/txt2img-$size.comfyc"
  echo "== compile ${size}x${size} ($STEPS steps), ONNX + PyTorch weights + fp16 variants"
  comfyc compile "$WF" -o "$ART" --store-torch --gpu-fp16 || { echo "compile failed"; continue; }
  if "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "== TensorRT engines (for the trt row)"
    comfyc build-engines "$ART" || echo "build-engines failed: $?"
  fi
  echo "== bench ${size}x${size}: $BACKENDS (unavailable ones skipped), $RUNS runs"
  comfyc bench "$ART" --backends "$BACKENDS" --runs "$RUNS" --warmup 2 \
      --precisions "$PRECISIONS" --skip-unavailable -o "$OUT/bench-$size" || echo "bench failed: $?"
  [ "$TUNE" = 0 ] && continue
  echo "== autotune ${size}x${size} (dry run: the plan is printed, not written)"
  if comfyc tune "$ART" --calls 20 --dry-run --json ${TUNE_BACKENDS:+--backends "$TUNE_BACKENDS"} \
      > "$OUT/autotune-$size.json"; then
    "$PY" -c 'import json, sys; from comfyc.cli.commands.tune import print_autotune
print_autotune(json.load(open(sys.argv[1])))' "$OUT/autotune-$size.json"
  else
    echo "tune failed: $?"
  fi
done
rm -rf "$SHIM"
echo "== reports: $OUT/bench-*/report.html, bench.json; autotune: $OUT/autotune-*.json"
