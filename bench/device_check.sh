#!/usr/bin/env bash
# One bounded GPU session for issue 7: installs the few packages the device lacks from .whl/,
# runs bench/gpu_check.sh (tiny model, 64 and 256 px: every backend present, autotune dry run),
# then times an SD1.5-size checkpoint (seeded random weights, 512x512) on torch-cuda.
#
#   OUT=/tmp/out bash bench/device_check.sh    # OUT default: bench/results/device
#
# Made for the device tool: the files that come back are at most 8, directly under $OUT:
#   log.txt  summary.txt  bench-64.json  bench-256.json  autotune-64.json  autotune-256.json
#   sd15.json
# Everything else (artifacts, HTML reports, charts, the 2 GB checkpoint) stays in $WORK.
# Every phase runs under `timeout` against one deadline (BUDGET_S, default 405 s), so the
# whole script ends in about 7 minutes; it exits 0 unless $OUT cannot be written, also on a
# machine without a GPU (the CUDA rows are then reported as skipped).
#
# Settings (environment): PYTHON (python3), STEPS (20), RUNS (5), SIZES ("64 256"),
# BUDGET_S (405), SD15 (auto: only with CUDA; 0: never; 1: always), SD15_RUNS (3),
# SD15_SIZE (512), SD15_LIMIT (200 s), SD15_REFERENCE (0; 1: the last seed again on the CPU
# torch backend, compared with the GPU's image), WORK (/tmp/comfyc-device), WHEELS (.whl),
# and gpu_check.sh's BACKENDS (the GPU rows and torch, the agreement reference), PRECISIONS
# (fp32) and TUNE (1). SIZES="" skips the tiny model.
#
# SD1.5-size agreement between the GPU and the CPU in about 4 minutes:
#   SIZES="" SD15=1 SD15_SIZE=256 STEPS=8 SD15_RUNS=2 SD15_REFERENCE=1 SD15_LIMIT=280 \
#     BUDGET_S=320 bash bench/device_check.sh
#
# The first run on an H200 (2026-12-04, bench/results/device/) spent its 170 s for 64 px on
# the int8 compile, torch.compile's 47 s warm-up and ort-cpu with 16 threads, and was cut off
# before comfyc bench wrote its report: hence the GPU-only rows and fp32 by default. With
# little device time left: SIZES=64 SD15=0 TUNE=0 BUDGET_S=200 (about 2 minutes).
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/bench/results/device}
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
export BACKENDS=${BACKENDS:-torch,torch-cuda,torch-compile-cuda,ort-cuda,ort-trt,trt}
export PRECISIONS=${PRECISIONS:-fp32}
RUNS=${RUNS:-5}
SIZES=${SIZES-64 256}   # (no colon: SIZES="" means none)
BUDGET_S=${BUDGET_S:-405}
SD15=${SD15:-auto}
SD15_RUNS=${SD15_RUNS:-3}
SD15_SIZE=${SD15_SIZE:-512}
SD15_LIMIT=${SD15_LIMIT:-200}
export SD15_REFERENCE=${SD15_REFERENCE:-0}
WORK=${WORK:-/tmp/comfyc-device}
WHEELS=${WHEELS:-$REPO/.whl}
SITE=$WORK/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DIFFUSERS_OFFLINE=1
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor   # tune's torch.compile reuses bench's kernels

# comfyc without installing it (setup.py's layout): comfyc.* -> the top folders, pkg/__init__.
shim() {
  local dir=$WORK/shim
  rm -rf "$dir" && mkdir -p "$dir/comfyc"
  ln -s "$REPO/pkg/__init__.py" "$dir/comfyc/__init__.py"
  for part in compiler runtime frontends serve cli examples; do
    ln -s "$REPO/$part" "$dir/comfyc/$part"
  done
  echo "$dir"
}
comfyc() { "$PY" -c 'import sys; from comfyc.cli.main import main; sys.exit(main())' "$@"; }

# ------------------------------------------------------------------ the SD1.5 part (re-entered
# as `bash device_check.sh --sd15` under timeout, so that one limit covers all of its steps)
if [ "${1:-}" = "--sd15" ]; then
  D=$WORK/sd15
  rm -rf "$D" && mkdir -p "$D/models/checkpoints"
  echo "== SD1.5 full size: seeded random fp16 checkpoint"
  "$PY" bench/make_checkpoints.py sd15 --size full --dtype fp16 \
      -o "$D/models/checkpoints/sd15.safetensors" || exit 1
  sed -e 's/tiny-digits.safetensors/sd15.safetensors/' -e "s/steps=20/steps=$STEPS/" \
      -e "s/width=64, height=64/width=$SD15_SIZE, height=$SD15_SIZE/" \
      -e 's/a handwritten digit seven/a photo of a cat/' examples/txt2img.cfy > "$D/sd15.cfy"
  echo "== SD1.5 compile ${SD15_SIZE}x$SD15_SIZE ($STEPS steps), PyTorch weights only (--backend torch)"
  start=$SECONDS
  comfyc compile "$D/sd15.cfy" -o "$D/sd15.comfyc" --backend torch --models-dir "$D/models" -q \
      || exit 1
  echo "compiled in $((SECONDS - start)) s"
  rm -f "$D/models/checkpoints/sd15.safetensors"
  echo "== SD1.5 run on ${SD15_BACKEND:-torch-cuda}: 1 warm-up + $SD15_RUNS timed images"
  "$PY" - "$D/sd15.comfyc" "${SD15_BACKEND:-torch-cuda}" "$SD15_RUNS" "$OUT/sd15.json" \
      "$SD15_SIZE" <<'PY'
import json, os, statistics, sys, time

import numpy as np
import torch

from comfyc.runtime.artifact import load

artifact, backend, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size = int(sys.argv[5])
cuda = torch.cuda.is_available()
result = {"model": "SD1.5 full size, seeded random weights", "size": f"{size}x{size}",
          "backend": backend, "precision": "fp32", "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name(0) if cuda else None}
start = time.perf_counter()
program = load(artifact, backend=backend)
result["load_s"] = round(time.perf_counter() - start, 3)
seconds = []
for index in range(runs + 1):
    start = time.perf_counter()
    run = program.run({"seed": 42 + index}, save=False)
    if cuda:
        torch.cuda.synchronize()
    seconds.append(time.perf_counter() - start)
    print(f"  image {index}{' (warm-up)' if index == 0 else ''}: {seconds[-1]:.3f} s", flush=True)
image = np.asarray(next(iter(run.images.values())))
result.update({
    "first_image_s": round(seconds[0], 3), "image_s": [round(s, 3) for s in seconds[1:]],
    "per_image_median_s": round(statistics.median(seconds[1:]), 3) if runs else None,
    "unet_calls": next((len(v) for k, v in program.timer.calls.items()
                        if k.startswith("unet")), None),
    "timings": run.timings,
    "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
    "image_shape": list(image.shape), "image_finite": bool(np.isfinite(image).all()),
    "image_mean": float(image.mean()), "image_std": float(image.std())})
if os.environ.get("SD15_REFERENCE") == "1":
    # NOTE: the last seed again on the CPU (torch backend, fp32): the GPU's image against it.
    del program
    start = time.perf_counter()
    cpu = load(artifact, backend="torch")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    ref = np.asarray(next(iter(cpu.run({"seed": 42 + runs}, save=False).images.values())))
    seconds_cpu = time.perf_counter() - start
    diff = np.abs(image.astype(np.float64) - ref.astype(np.float64))
    mse = float((diff ** 2).mean())
    pixels = np.abs(np.floor(np.clip(image, 0, 1) * 255.0) - np.floor(np.clip(ref, 0, 1) * 255.0))
    result["cpu_reference"] = {
        "backend": "torch (CPU, fp32)", "threads": torch.get_num_threads(),
        "load_s": round(loaded, 3), "image_s": round(seconds_cpu, 3), "seed": 42 + runs,
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "max_pixel_levels": float(pixels.max()),
        "pixels_differing_share": float((pixels > 0).mean())}
    print("  CPU reference:", json.dumps(result["cpu_reference"]), flush=True)
with open(out, "w") as f:
    json.dump(result, f, indent=2, default=str)
print(json.dumps({k: result[k] for k in ("backend", "load_s", "first_image_s",
                                         "per_image_median_s", "peak_gpu_mb", "image_finite")}))
PY
  status=$?
  rm -rf "$D"
  exit $status
fi

# ------------------------------------------------------------------ main
mkdir -p "$OUT" "$WORK" || exit 1
: > "$OUT/log.txt" || exit 1
DEADLINE=$((SECONDS + BUDGET_S))
left() { echo $((DEADLINE - SECONDS)); }
# limit WANTED: at most WANTED seconds, never past the deadline
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && l=$1; echo "$l"; }

main() {
  echo "== device_check $(date -u +%FT%TZ): STEPS=$STEPS RUNS=$RUNS SIZES='$SIZES'" \
       "BUDGET_S=$BUDGET_S"
  echo "== nvidia-smi"
  nvidia-smi || echo "no nvidia-smi"
  echo "== packages from $WHEELS (only those missing here, or huggingface_hub older than 1.32)"
  rm -rf "$SITE" && mkdir -p "$SITE"
  local wanted
  wanted=$("$PY" - "$WHEELS" <<'PY'
import importlib.metadata as md, pathlib, re, sys

# diffusers 0.42 needs huggingface_hub >= 1.32 (transformers 5.x: < 2.0, so 1.33 fits both).
minimum = {"huggingface_hub": (1, 32)}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = wheel.name.split("-")[0]
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        have = None
    numbers = tuple(int(n) for n in re.findall(r"\d+", have or "")[:2])
    old = have is not None and dist in minimum and numbers < minimum[dist]
    print(f"  {dist:<20} here: {have or 'missing':<12} -> "
          f"{'install ' + wheel.name if have is None or old else 'keep'}", file=sys.stderr)
    if have is None or old:
        print(wheel)
PY
  )
  if [ -n "$wanted" ]; then
    # shellcheck disable=SC2086 # one wheel path a line, no spaces
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" $wanted; then
      echo "pip install failed: unpacking the (pure-Python) wheels instead"
      "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]: zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" $wanted
    fi
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  echo "== versions"
  "$PY" - <<'PY'
import importlib, sys
print("  python", sys.version.split()[0])
for name in ("torch", "diffusers", "transformers", "huggingface_hub", "onnx", "onnxscript",
             "onnxruntime", "lark", "requests", "safetensors", "numpy", "matplotlib"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:<16} {getattr(module, '__version__', '?'):<14} "
              f"{getattr(module, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"  {name:<16} FAILED: {type(exc).__name__}: {exc}")
try:
    import torch
    print("  cuda:", torch.version.cuda, torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401 - the torch rows
    print("  diffusers models import: ok")
except Exception as exc:  # noqa: BLE001
    print(f"  FAILED: {type(exc).__name__}: {exc}")
PY
  local cuda=0
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
      && cuda=1

  # The GPU-marked tests that need nothing but CUDA torch: the `cuda` noise mode (CudaGenerator,
  # the Philox emulation of torch's CUDA randn) against torch on this GPU.
  if [ "$cuda" = 1 ]; then
    echo "== pytest -m gpu tests/runtime/test_noise_cuda.py, at most $(limit 90) s"
    PYTHONPATH="$(shim)${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 "$(limit 90)" \
        "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider tests/runtime/test_noise_cuda.py
    echo "pytest -m gpu: exit $?"
  fi

  # The tiny model: one gpu_check.sh per size, each bounded (torch.compile warm-ups included).
  # tune: torch-compile on the CPU is left out (a minute of inductor C++ builds, not a GPU row).
  local size lim gpu=$WORK/gpu
  rm -rf "$gpu"
  for size in $SIZES; do
    lim=$(limit $([ "$size" -le 64 ] && echo 170 || echo 110))
    if [ "$lim" -lt 30 ]; then echo "== tiny ${size}px: skipped, $(left) s left"; continue; fi
    echo "== tiny model ${size}x${size}: bench/gpu_check.sh, at most $lim s"
    timeout -k 10 "$lim" env PYTHON="$PY" OUT="$gpu" STEPS="$STEPS" RUNS="$RUNS" SIZES="$size" \
        TUNE_BACKENDS=ort-cpu,ort-cuda,ort-trt,trt,torch,torch-cuda,torch-compile-cuda \
        bash bench/gpu_check.sh
    echo "gpu_check.sh ${size}px: exit $? after $((SECONDS)) s in all"
    cp "$gpu/bench-$size/bench.json" "$OUT/bench-$size.json" 2>/dev/null \
        || echo "no bench-$size/bench.json"
    [ -s "$gpu/autotune-$size.json" ] && cp "$gpu/autotune-$size.json" "$OUT/"
  done

  # SD1.5 size on torch-cuda (fp32: comfyc's torch backends run the fp32 weights only).
  lim=$(limit "$SD15_LIMIT")
  if [ "$SD15" = 0 ] || { [ "$SD15" = auto ] && [ "$cuda" = 0 ]; }; then
    echo "== SD1.5: skipped (SD15=$SD15, cuda=$cuda)"
  elif [ "$lim" -lt 60 ]; then
    echo "== SD1.5: skipped, only $lim s left"
  else
    echo "== SD1.5 ${SD15_SIZE}x$SD15_SIZE on torch-cuda, at most $lim s"
    PYTHONPATH="$(shim)${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 "$lim" \
        bash "$REPO/bench/device_check.sh" --sd15
    echo "SD1.5: exit $? after $SECONDS s in all (124: out of time)"
    rm -rf "$WORK/sd15"   # up to 6 GB when cut short
  fi

  echo "== summary (also in summary.txt)"
  "$PY" - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
for path in sorted(out.glob("bench-*.json")):
    report = json.loads(path.read_text())
    machine = report.get("machine") or {}
    print(f"{path.name}: torch {machine.get('torch')}, ort {machine.get('onnxruntime')} "
          f"{machine.get('providers')}, {machine.get('cpus')} CPUs")
    for row in report.get("rows", []):
        image = row.get("per_image") or {}
        agree = row.get("agreement") or {}
        text = (f"error: {str(row['error'])[:150]}" if row.get("error") else
                f"median {image.get('median_ms', float('nan')):8.1f} ms/image, p90 "
                f"{image.get('p90_ms', float('nan')):8.1f}, load {row.get('load_s') or 0:.2f}"
                f" s, max dpx {agree.get('max_pixel_diff', '-')}")
        print(f"  {row.get('label', '?'):<22} {text}")
for path in sorted(out.glob("autotune-*.json")):
    tuned = json.loads(path.read_text())
    print(f"{path.name}: " + ", ".join(f"{name.split('_')[0]}={row.get('choice')}"
                                       for name, row in (tuned.get("stages") or {}).items()))
sd = out / "sd15.json"
if sd.is_file():
    r = json.loads(sd.read_text())
    print(f"sd15.json: {r['backend']} {r['size']} {r['precision']}: "
          f"{r['per_image_median_s']} s/image (first {r['first_image_s']} s, load "
          f"{r['load_s']} s, peak GPU {r['peak_gpu_mb']} MB, finite {r['image_finite']})")
    ref = r.get("cpu_reference")
    if ref:
        print(f"  vs the CPU (torch, seed {ref['seed']}): max |diff| {ref['max_abs_diff']:.3g}, "
              f"PSNR {ref['psnr_db']:.1f} dB, max {ref['max_pixel_levels']:.0f} levels, "
              f"{ref['pixels_differing_share'] * 100:.2f} % of values differ")
else:
    print("sd15.json: none")
PY
  echo "== files in $OUT:"; ls -la "$OUT"
  echo "== done in $SECONDS s"
}

main 2>&1 | tee -a "$OUT/log.txt"
exit 0
