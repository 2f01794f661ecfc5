"""By hand: ComfyUI's own page opens the PNGs comfyc writes (issue #21 item 3, "ComfyUI can
load the PNG").

``png_roundtrip.py`` queues a comfyc PNG's ``prompt`` chunk through ComfyUI's HTTP API. This
script goes through the page a user drops the PNG on: for each chosen case ``comfyc run``
(torch path) writes a PNG; ComfyUI's server (from source, ``--cpu``, on the recording's seeded
model files) serves its frontend to a headless Chromium driven over the DevTools protocol
(``tests/serve/cdp.py``); the PNG's bytes are handed to the page's own file handler
(``app.handleFile``, what a drop or "Open" calls), and the workflow the page then holds is read
back as the API prompt it would queue (``app.graphToPrompt``). That prompt must equal the
PNG's ``prompt`` chunk node for node (class and every input). With ``--queue`` the page also
queues it (``app.queuePrompt``, the Queue button's call) and the picture ComfyUI makes is
compared with comfyc's. Run from the repository root after ``record.py`` left its work folder::

    .venv/bin/python -m tests.comfyui_reference.page_roundtrip --comfyui /work/comfyui \\
        --python /work/comfyui-server-venv/bin/python --work /tmp/comfyc-ref --queue \\
        embedding img2img lora

Needs Chromium (``make chromium``) and ComfyUI's frontend package in ComfyUI's venv (its
requirements install it).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..serve.cdp import Browser, find_chromium
from .harness import read_png, read_png_text
from .png_roundtrip import comfyc_pngs, comfyui_command
from .record import _request, _wait_for_server

_LOAD = """(async () => {
  const bytes = Uint8Array.from(atob(%(data)s), c => c.charCodeAt(0));
  const file = new File([bytes], %(name)s, {type: "image/png"});
  await window.app.handleFile(file);
  await new Promise(r => setTimeout(r, 300));
  const prompt = await window.app.graphToPrompt();
  return JSON.stringify(prompt.output);
})()"""


def _canonical(prompt: dict[str, Any]) -> dict[str, Any]:
    """Node id -> class and inputs (links as ``[str id, slot]``); page-only ``_meta`` dropped."""
    out = {}
    for node_id, node in prompt.items():
        inputs = {k: ([str(v[0]), int(v[1])] if isinstance(v, list) else v)
                  for k, v in node["inputs"].items()}
        out[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def _differences(ours: dict[str, Any], page: dict[str, Any]) -> list[str]:
    problems = []
    for node_id in sorted(set(ours) | set(page), key=lambda k: int(k)):
        a, b = ours.get(node_id), page.get(node_id)
        if a is None or b is None:
            problems.append(f"node {node_id}: only in {'the page' if a is None else 'the PNG'}")
        elif a != b:
            problems.append(f"node {node_id}: PNG {a} / page {b}")
    return problems


def _queued_pictures(base: str, before: set[str], work: Path, limit: float = 900) -> list[Path]:
    """The pictures of the one prompt that entered ComfyUI's history after ``before``."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        history = _request(f"{base}/history", timeout=60)
        new = [k for k in history if k not in before]
        if new:
            entry = history[new[0]]
            status = entry.get("status", {})
            if status.get("status_str") == "error":
                raise RuntimeError(f"ComfyUI failed: {status}")
            if status.get("completed"):
                images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
                return sorted(work / "output" / i.get("subfolder", "") / i["filename"]
                              for i in images)
        time.sleep(0.5)
    raise TimeoutError("the page's prompt did not finish")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--python", required=True, help="ComfyUI's venv python")
    parser.add_argument("--work", type=Path, required=True, help="record.py's work folder")
    parser.add_argument("--port", type=int, default=18191)
    parser.add_argument("--queue", action="store_true",
                        help="also queue from the page and compare ComfyUI's picture")
    parser.add_argument("cases", nargs="+")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium: run `make chromium`", file=sys.stderr)
        return 2
    work = args.work.resolve()
    ours = comfyc_pngs(work, args.cases, "page")
    command = comfyui_command(args.python, args.port, work)
    base = f"http://127.0.0.1:{args.port}"
    failures = 0
    with open(work / "page_roundtrip.log", "wb") as log, \
            tempfile.TemporaryDirectory(prefix="comfyc-page-") as profile:
        process = subprocess.Popen(command, cwd=args.comfyui, stdout=log,
                                   stderr=subprocess.STDOUT)
        browser = None
        try:
            _wait_for_server(base, process)
            browser = Browser(chromium, Path(profile))
            browser.navigate(base + "/")
            browser.wait_for("window.app && window.app.graph && "
                             "typeof window.app.handleFile === 'function'", timeout=180,
                             what="ComfyUI's page")
            for name, pngs in ours.items():
                png = pngs[0]
                chunk = json.loads(read_png_text(png)["prompt"])
                loaded = browser.evaluate(_LOAD % {
                    "data": json.dumps(base64.b64encode(png.read_bytes()).decode()),
                    "name": json.dumps(png.name)}, timeout=120)
                page = json.loads(loaded)
                problems = _differences(_canonical(chunk), _canonical(page))
                if problems:
                    failures += 1
                    print(f"{name}: the page's workflow differs from the PNG's prompt chunk:\n  "
                          + "\n  ".join(problems), flush=True)
                    continue
                print(f"{name}: ComfyUI's page opened {png.name}: its workflow is the PNG's "
                      f"prompt chunk ({len(chunk)} nodes)", flush=True)
                if not args.queue:
                    continue
                before = set(_request(f"{base}/history", timeout=60))
                browser.evaluate("window.app.queuePrompt(0, 1)", timeout=120)
                theirs = _queued_pictures(base, before, work)
                if len(theirs) != len(pngs):
                    failures += 1
                    print(f"{name}: the page's prompt made {len(theirs)} pictures, comfyc "
                          f"{len(pngs)}", flush=True)
                    continue
                diff = np.concatenate([
                    np.abs(read_png(a).astype(np.int16) - read_png(b).astype(np.int16)).ravel()
                    for a, b in zip(theirs, pngs, strict=True)])
                failures += int(diff.max() > 1)
                print(f"{name}: queued from the page, ComfyUI's picture against comfyc's: "
                      f"max {diff.max()}/255, mean {diff.mean():.4f}/255", flush=True)
            errors = [text for level, text in browser.console
                      if level in ("error", "exception")]
            if errors:
                print("page console errors:\n  " + "\n  ".join(errors[:10]), flush=True)
        finally:
            if browser is not None:
                browser.close()
            process.terminate()
            process.wait(timeout=60)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
