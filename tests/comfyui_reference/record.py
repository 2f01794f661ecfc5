"""Record reference images from the real ComfyUI (run by hand; pytest never runs it).

Writes the seeded model files of :mod:`models` into a work folder, starts ComfyUI's own server
from its source (``main.py --cpu`` on a loopback port, ``--base-directory`` pointing at the work
folder), queues every workflow of :mod:`cases` through ComfyUI's HTTP API (``POST /prompt``,
``GET /history/<id>``) and stores what ComfyUI wrote, unchanged, in ``recordings/<set>/``:

* ``<case>_0000N_.png``: ComfyUI's PNGs, byte for byte (their ``prompt`` text chunk is what
  ComfyUI stores for the workflow: the case's API JSON plus the SaveLatent node added here);
* ``latents.npz``: the sampled LATENT of each case (ComfyUI's SaveLatent file, ``latent_tensor``);
* ``manifest.json``: the ComfyUI commit and version, torch version, the SHA-256 of every model
  file (the tests regenerate the files and compare), and per case the workflow sent, the PNG
  names and ComfyUI's run time.

Sets: ``current`` (:data:`cases.CASES`, ComfyUI at ``COMFYUI_COMMIT``, noise mode ``cpu``),
``legacy`` (:data:`cases.LEGACY_CASES`, a ComfyUI from before its pull request #11528 "Fix
noise with ancestral samplers when inferencing on cpu", noise mode ``cpu-legacy``), ``sdxl``
(:data:`cases.SDXL_CASES`, current ComfyUI, a seeded SDXL-architecture checkpoint of its own:
``models.write_sdxl_models``; ComfyUI holds it in float32, about 14 GB of memory) and ``sd3``
(:data:`cases.SD3_CASES`, current ComfyUI, separate SD3 files of its own:
``models.write_sd3_models``, 1.8 GB)::

    .venv/bin/python -m tests.comfyui_reference.record --comfyui /work/comfyui \\
        --python /work/comfyui-server-venv/bin/python --set sdxl --work /tmp/comfyc-ref-sdxl
    .venv/bin/python -m tests.comfyui_reference.record --comfyui /work/comfyui \\
        --python /work/comfyui-server-venv/bin/python --set sd3 --work /tmp/comfyc-ref-sd3

Recorded with::

    # ComfyUI sources, outside the repository (plain exports; COMFYUI_COMMIT names the commit):
    #   /work/comfyui      4f874c5e3a2fafb9938273c5f3fc47d2da017667 (2026-07, version 0.29.0)
    #   /work/comfyui-old  a125cd84b054a57729b5eecab930ca9408719832 (2025-10, version 0.3.64)
    python3 -m venv /work/comfyui-server-venv
    /work/comfyui-server-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    grep -v -E '^(torch|torchvision)$' /work/comfyui/requirements.txt > /tmp/req.txt
    /work/comfyui-server-venv/bin/pip install -r /tmp/req.txt      # everything installed
    .venv/bin/python -m tests.comfyui_reference.record --comfyui /work/comfyui \\
        --python /work/comfyui-server-venv/bin/python --set current
    .venv/bin/python -m tests.comfyui_reference.record --comfyui /work/comfyui-old \\
        --python /work/comfyui-server-venv/bin/python --set legacy

(run from the repository root with comfyc's own venv, which writes the model files; ComfyUI runs
in its venv as a separate process). To add or redo cases, keeping the others of the set::

    .venv/bin/python -m tests.comfyui_reference.record --comfyui /work/comfyui \
        --python /work/comfyui-server-venv/bin/python --set current --work /tmp/comfyc-ref \
        --reuse-models --only sampler_lcm hires

(``--reuse-models``: model files left in ``--work`` by an earlier recording are used when they
hash as recorded, and files added to the set since, the embedding and the ControlNet, are
written; about 20-120 s per case on a busy 2-core machine, dpm_adaptive 450 s.) The ControlNet
cases were added that way (``--only controlnet controlnet_range controlnet_apply_old``, 30-60 s
each), the ``sdxl`` set with the command above (about 20 s per case after a 1-2 minute load).

Both ComfyUIs ran on the CPU (``--cpu``: float32 UNet and VAE, float16 text encoder,
sub-quadratic attention) with torch 2.14.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .cases import SETS, Case
from .models import file_sha256, models_writer, write_controlnet, write_embedding, write_inputs

__all__ = ["RECORDINGS", "main", "record"]

RECORDINGS = Path(__file__).resolve().parent / "recordings"
_LATENT_NODE = "90"


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read().decode())


def _wait_for_server(base: str, process: subprocess.Popen[bytes], limit: float = 1800) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with status {process.returncode}; see its log")
        try:
            _request(f"{base}/system_stats", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1.0)
    raise TimeoutError(f"ComfyUI did not answer at {base} within {limit} s")


def _with_save_latent(case: Case) -> dict[str, Any]:
    """The case's workflow plus a SaveLatent node on the LATENT that VAEDecode decodes."""
    prompt = case.workflow()
    decode = next(n for n in prompt.values() if n["class_type"] == "VAEDecode")
    prompt[_LATENT_NODE] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": decode["inputs"]["samples"],
                   "filename_prefix": f"latents/{case.name}"},
    }
    return prompt


def _run_case(base: str, case: Case, output_dir: Path, limit: float = 1800) -> dict[str, Any]:
    prompt = _with_save_latent(case)
    started = time.monotonic()
    # NOTE: the prompt id is chosen here, so that a POST whose answer timed out on a busy
    # machine can be told apart from one that never arrived (ComfyUI accepts "prompt_id").
    prompt_id = str(uuid.uuid4())  # NOTE: current ComfyUI insists on the dashed UUID form
    body = {"prompt": prompt, "client_id": uuid.uuid4().hex, "prompt_id": prompt_id}
    for _attempt in range(5):
        try:
            _request(f"{base}/prompt", body, timeout=300)
            break
        except urllib.error.HTTPError:
            raise  # NOTE: ComfyUI answered (e.g. 400, a node it does not have): no retry
        except (TimeoutError, urllib.error.URLError):
            if _known(base, prompt_id):
                break
    while True:
        try:
            entry = _request(f"{base}/history/{prompt_id}", timeout=120).get(prompt_id)
        except (TimeoutError, urllib.error.URLError):
            entry = None
        if entry and entry.get("status", {}).get("completed"):
            break
        if entry and entry.get("status", {}).get("status_str") == "error":
            raise RuntimeError(f"{case.name}: ComfyUI failed: {entry['status']}")
        if time.monotonic() - started > limit:
            raise TimeoutError(f"{case.name}: no result within {limit} s")
        time.sleep(0.5)
    seconds = time.monotonic() - started
    images = entry["outputs"]["9"]["images"]
    latents = entry["outputs"][_LATENT_NODE]["latents"]
    files = [output_dir / item.get("subfolder", "") / item["filename"] for item in images]
    latent_files = [output_dir / item.get("subfolder", "") / item["filename"]
                    for item in latents]
    return {"prompt": prompt, "seconds": round(seconds, 2), "images": files,
            "latents": latent_files}


def _known(base: str, prompt_id: str) -> bool:
    """Whether ComfyUI has the prompt queued, running or done."""
    for _attempt in range(10):
        try:
            queue = _request(f"{base}/queue", timeout=120)
            history = _request(f"{base}/history/{prompt_id}", timeout=120)
        except (TimeoutError, urllib.error.URLError):
            time.sleep(5.0)
            continue
        items = queue.get("queue_running", []) + queue.get("queue_pending", [])
        return prompt_id in history or any(item[1] == prompt_id for item in items)
    return False


def _read_latent(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path))["latent_tensor"].astype(np.float32)


def record(comfyui: Path, python: str, which: str, work: Path, port: int,
           only: list[str] | None = None, reuse_models: bool = False) -> Path:
    """Record one set of cases; returns the recording folder."""
    cases = SETS[which]
    if only:
        # NOTE: in the order given, so that a long recording can do the important ones first.
        by_name = {c.name: c for c in cases}
        cases = tuple(by_name[name] for name in only if name in by_name)
    models_dir = work / "models"
    # NOTE: the legacy set uses the current set's files; the sdxl and sd3 sets have their own.
    own = which in ("sdxl", "sd3")
    known = RECORDINGS / (which if own else "current") / "manifest.json"
    hashes: dict[str, str] = {}
    if reuse_models and known.is_file():
        # NOTE: reuse files an earlier recording wrote when they still hash as recorded.
        expected = json.loads(known.read_text()).get("model_sha256", {})
        if all((models_dir / name).is_file() for name in expected):
            hashes = {name: file_sha256(models_dir / name) for name in expected}
            if hashes != expected:
                hashes = {}
    if not hashes:
        models = models_writer(which)(models_dir)
        hashes = {name: file_sha256(path) for name, path in models.items()}
    elif not own:  # NOTE: files added to the set since that recording (cheap to write)
        for path in (write_embedding(models_dir), write_controlnet(models_dir)):
            hashes[path.relative_to(models_dir).as_posix()] = file_sha256(path)
    write_inputs(work / "input")
    commit = (comfyui / "COMFYUI_COMMIT").read_text().strip()
    version_text = (comfyui / "comfyui_version.py").read_text()
    version = version_text.rsplit("=", 1)[-1].strip().strip('"')
    log_path = work / "comfyui.log"
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(work), "--disable-all-custom-nodes",
               "--preview-method", "none"]
    output_dir = work / "output"
    shutil.rmtree(output_dir, ignore_errors=True)
    out_dir = RECORDINGS / which
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text()) if only and
                                manifest_path.exists() else {"cases": {}})
    latents: dict[str, np.ndarray] = {}
    if only and (out_dir / "latents.npz").exists():
        with np.load(out_dir / "latents.npz") as z:
            latents = {k: z[k] for k in z.files}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_server(base, process)
            stats = _request(f"{base}/system_stats")
            manifest.update({
                "comfyui_commit": commit,
                "comfyui_version": version,
                "comfyui_system": stats.get("system", {}),
                "command": " ".join(command[1:]),
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": platform.machine(),
                "model_sha256": hashes,
            })
            for case in cases:
                try:
                    result = _run_case(base, case, output_dir)
                except (RuntimeError, TimeoutError, urllib.error.HTTPError) as exc:
                    # NOTE: keep going; the case is left out of the manifest and reported.
                    body = exc.read().decode() if isinstance(exc, urllib.error.HTTPError) else ""
                    print(f"{case.name}: FAILED: {exc} {body}", flush=True)
                    continue
                names = []
                for src in result["images"]:
                    shutil.copyfile(src, out_dir / src.name)
                    names.append(src.name)
                latents[case.name] = np.concatenate([_read_latent(p) for p in result["latents"]])
                manifest["cases"][case.name] = {
                    "kind": case.kind, "sampler": case.sampler, "noise_mode": case.noise_mode,
                    "images": names, "seconds": result["seconds"], "prompt": result["prompt"],
                }
                print(f"{case.name}: {result['seconds']:.1f} s -> {', '.join(names)}",
                      flush=True)
                _write(manifest_path, manifest, out_dir, latents)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    _write(manifest_path, manifest, out_dir, latents)
    return out_dir


def _write(manifest_path: Path, manifest: dict[str, Any], out_dir: Path,
           latents: dict[str, np.ndarray]) -> None:
    """Write the manifest and the latents (after every case, so a stop keeps what was done)."""
    manifest["cases"] = dict(sorted(manifest["cases"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    np.savez_compressed(out_dir / "latents.npz", **dict(sorted(latents.items())))


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI source folder")
    parser.add_argument("--python", default=sys.executable, help="ComfyUI's venv python")
    parser.add_argument("--set", dest="which", choices=tuple(SETS), default="current")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder for models/input/output (default: a temporary one)")
    parser.add_argument("--port", type=int, default=18188)
    parser.add_argument("--only", nargs="*", default=None,
                        help="record these cases only, in this order (others are kept)")
    parser.add_argument("--reuse-models", action="store_true",
                        help="keep model files in --work whose hashes match the recording")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="comfyc-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # NOTE: SIGTERM ends the recording through the normal exit path, which stops ComfyUI.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = record(args.comfyui.resolve(), args.python, args.which, work, args.port, args.only,
                 args.reuse_models)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
