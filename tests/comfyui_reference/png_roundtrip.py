"""By hand: ComfyUI loads the PNGs comfyc writes and reproduces their pixels (issue #21 item 3).

For each chosen case, ``comfyc run`` (torch path) writes a PNG from the case's API workflow;
the PNG's ``prompt`` text chunk is then queued, as is, on the real ComfyUI (its own server from
source, ``--cpu``, on the recording's seeded model files) and ComfyUI's picture is compared
with comfyc's. Run from the repository root after ``record.py`` left its work folder::

    .venv/bin/python -m tests.comfyui_reference.png_roundtrip --comfyui /work/comfyui \\
        --python /work/comfyui-server-venv/bin/python --work /tmp/comfyc-ref embedding img2img
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from .cases import case_by_name
from .harness import read_png, read_png_text
from .record import _request, _wait_for_server


def comfyc_pngs(work: Path, names: list[str], folder_name: str) -> dict[str, list[Path]]:
    """``comfyc run`` (torch path) of each named case on ``work``'s models and inputs; its PNGs
    by case, written under ``work/<folder_name>/<case>``."""
    ours: dict[str, list[Path]] = {}
    for name in names:
        case = case_by_name(name)
        folder = work / folder_name / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "workflow.json").write_text(json.dumps(case.workflow()))
        subprocess.run([sys.executable, "-m", "comfyc.cli.main", "run",
                        str(folder / "workflow.json"), "--models-dir", str(work / "models"),
                        "--input-dir", str(work / "input"), "-o", str(folder), "-q",
                        "--noise-mode", case.noise_mode], check=True)
        ours[name] = sorted(folder.glob(f"{name}_*.png"))
    return ours


def comfyui_command(python: str, port: int, work: Path) -> list[str]:
    """ComfyUI's server from source on the CPU, on loopback, with ``work`` as its base folder."""
    return [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(work), "--disable-all-custom-nodes", "--preview-method",
            "none"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--python", required=True, help="ComfyUI's venv python")
    parser.add_argument("--work", type=Path, required=True, help="record.py's work folder")
    parser.add_argument("--port", type=int, default=18189)
    parser.add_argument("cases", nargs="+")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    ours = comfyc_pngs(work, args.cases, "roundtrip")
    command = comfyui_command(args.python, args.port, work)
    base = f"http://127.0.0.1:{args.port}"
    worst = 0.0
    with open(work / "roundtrip.log", "wb") as log:
        process = subprocess.Popen(command, cwd=args.comfyui, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            _wait_for_server(base, process)
            for name, pngs in ours.items():
                prompt = json.loads(read_png_text(pngs[0])["prompt"])
                prompt_id = str(uuid.uuid4())
                _request(f"{base}/prompt", {"prompt": prompt, "prompt_id": prompt_id},
                         timeout=300)
                while True:
                    entry = _request(f"{base}/history/{prompt_id}", timeout=120).get(prompt_id)
                    if entry and entry.get("status", {}).get("completed"):
                        break
                    if entry and entry.get("status", {}).get("status_str") == "error":
                        raise RuntimeError(f"{name}: ComfyUI failed: {entry['status']}")
                    time.sleep(0.5)
                images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
                theirs = sorted(work / "output" / i.get("subfolder", "") / i["filename"]
                                for i in images)
                if len(theirs) != len(pngs):
                    raise RuntimeError(f"{name}: ComfyUI wrote {len(theirs)} pictures, comfyc "
                                       f"{len(pngs)}")
                diff = np.concatenate([
                    np.abs(read_png(a).astype(np.int16) - read_png(b).astype(np.int16)).ravel()
                    for a, b in zip(theirs, pngs, strict=True)])
                worst = max(worst, float(diff.max()))
                print(f"{name}: ComfyUI ran comfyc's prompt chunk ({len(pngs)} pictures); "
                      f"max {diff.max()}/255, "
                      f"mean {diff.mean():.4f}/255", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
