"""Issue 20: the first prompt of a new graph shape, before (compile first) and after (tiers).

For each model — the embedded tiny model and an SD1.5-size random checkpoint written by
``bench/make_checkpoints.py sd15 --size full`` — and the txt2img API workflow of
``tests/serve/txt2img_api.json`` pointed at it:

* **warm ``comfyc run``** (PyTorch): ``comfyc run WORKFLOW.json`` as a process, twice; the
  second (the OS file cache warm) is the reference — a user's fastest way to get one picture
  without a server;
* **before**: ``comfyc serve --first-run compile`` with an empty cache — the first prompt waits
  for its artifact to compile (what every first prompt did before issue 20);
* **after**: ``comfyc serve`` (tiers) with an empty cache — the first prompt runs at once on
  the torch tier while its artifact compiles in a background process. Measured twice: posted
  the moment the server answers (its PyTorch imports still loading: a script's first call),
  and posted once the server has preloaded them (a person opening the page and loading a
  workflow). Then the second prompt (torch tier, warm), the background compile's duration,
  and the first prompt on the artifact once it is ready.

Latency is POST /prompt to the prompt's ``executing null`` on a websocket. Each server is a
fresh process with a fresh cache; they run one after another on the same box, whose 1-minute
load average is recorded before each measurement.

    python bench/bench_serve_tiers.py [--models tiny,sd15] [--sd15-size 256] [--steps 8]
        [--sd15-ckpt MODELS/checkpoints/FILE]  (an SD1.5-size checkpoint already written)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common import REPO, save

WORKFLOW = REPO / "tests" / "serve" / "txt2img_api.json"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prompt(ckpt: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["1"]["inputs"]["ckpt_name"] = ckpt
    prompt["4"]["inputs"].update(width=size, height=size)
    prompt["5"]["inputs"].update(seed=seed, steps=steps)
    return prompt


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


class Server:
    """A `comfyc serve` process with its own folders."""

    def __init__(self, root: Path, models: Path | None, *extra: str) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "comfyc.cli.main", "serve", "--port", str(self.port),
                "-o", str(root / "out"), "--input-dir", str(root / "in"), "--cache-dir",
                str(root / "cache"), "--user-dir", str(root / "user"), "--no-queue-store",
                *extra]
        if models is not None:
            args += ["--models-dir", str(models)]
        self.log = root / "server.log"
        self.process = subprocess.Popen(args, stdout=open(self.log, "wb"),  # noqa: SIM115
                                         stderr=subprocess.STDOUT, env=_env(), cwd=root)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start:\n" + self.log.read_text()[-2000:])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=120) as response:
            return json.load(response)

    def tiers(self) -> dict[str, Any]:
        return self.get("/system_stats")["system"]["comfyc"]["tiers"]

    def run(self, prompt: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """(POST to `executing null` in seconds, the history entry)."""
        import websocket

        client = str(uuid.uuid4())
        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client}")
        ws.recv()
        ws.settimeout(3600)
        body = json.dumps({"prompt": prompt, "client_id": client}).encode()
        started = time.perf_counter()
        request = urllib.request.Request(self.url + "/prompt", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            prompt_id = json.load(response)["prompt_id"]
        while True:
            frame = ws.recv()
            if isinstance(frame, bytes):
                continue
            message = json.loads(frame)
            data = message.get("data", {})
            if message["type"] == "executing" and data.get("node") is None \
                    and data.get("prompt_id") == prompt_id:
                break
        latency = time.perf_counter() - started
        ws.close()
        entry = self.get(f"/history/{prompt_id}")[prompt_id]
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(f"prompt failed: {json.dumps(entry['status'])[:2000]}")
        return latency, entry

    def wait(self, what: str, timeout: float = 3600) -> float:
        """Seconds until the server preloaded (``preload``) or compiled (``compile``)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            tiers = self.tiers()
            if (tiers["preloaded"] if what == "preload" else not tiers["compiling"]):
                return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"no {what} in {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def comfyc_run(prompt: dict[str, Any], models: Path | None, root: Path) -> list[float]:
    """Wall seconds of `comfyc run` (torch) twice, as processes."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "workflow.json"
    path.write_text(json.dumps(prompt))
    args = [sys.executable, "-m", "comfyc.cli.main", "run", str(path), "-o", str(root / "out")]
    if models is not None:
        args += ["--models-dir", str(models)]
    times = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, env=_env(), cwd=root)
        times.append(time.perf_counter() - started)
    return times


VARIANTS = ("before", "after_at_start", "after_preloaded")


def measure(name: str, ckpt: str, models: Path | None, size: int, steps: int,
            work: Path, variants: tuple[str, ...] = VARIANTS, artifact: bool = True
            ) -> dict[str, Any]:
    """Every figure of one model (see the module docstring); ``variants`` of the server, and
    (``artifact``) whether the tiered servers wait for their artifact and run a prompt on it
    (False: stopped after two torch-tier prompts, before the compile holds its memory)."""
    out: dict[str, Any] = {"ckpt": ckpt, "size": size, "steps": steps}
    prompt = _prompt(ckpt, size, steps, seed=1)
    out["load_before_run"] = _load()
    out["comfyc_run_s"] = comfyc_run(prompt, models, work / f"{name}-run")
    print(f"{name}: comfyc run {out['comfyc_run_s']}", flush=True)

    if "before" in variants:
        out["load_before_compile_first"] = _load()
        server = Server(work / f"{name}-before", models, "--first-run", "compile")
        try:
            latency, entry = server.run(prompt)
            out["before"] = {"first_s": latency, "prepare_s": entry["comfyc"]["prepare_s"],
                             "run_s": entry["comfyc"]["run_s"],
                             "second_s": server.run(_prompt(ckpt, size, steps, seed=2))[0]}
        finally:
            server.stop()
        print(f"{name}: before {out['before']}", flush=True)

    for variant, wait in (("after_at_start", False), ("after_preloaded", True)):
        if variant not in variants:
            continue
        out[f"load_before_{variant}"] = _load()
        server = Server(work / f"{name}-{variant}", models)
        try:
            facts: dict[str, Any] = {}
            if wait:
                facts["preload_s"] = server.wait("preload")
            latency, entry = server.run(prompt)
            facts.update(first_s=latency, tier=entry["comfyc"]["tier"],
                         prepare_s=entry["comfyc"]["prepare_s"], run_s=entry["comfyc"]["run_s"])
            second, entry = server.run(_prompt(ckpt, size, steps, seed=2))
            facts.update(second_s=second, second_tier=entry["comfyc"]["tier"])
            if artifact:
                facts["compile_done_after_s"] = server.wait("compile")
                third, entry = server.run(_prompt(ckpt, size, steps, seed=3))
                facts.update(artifact_s=third, artifact_tier=entry["comfyc"]["tier"])
            out[variant] = facts
        finally:
            server.stop()
        print(f"{name}: {variant} {out[variant]}", flush=True)
    warm = out["comfyc_run_s"][-1]
    out["first_over_warm_run"] = {v: out[v]["first_s"] / warm for v in variants}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,sd15", help="tiny, sd15 or both")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sd15-size", type=int, default=256,
                        help="picture size of the SD1.5 runs (default 256: CPU minutes)")
    parser.add_argument("--sd15-steps", type=int, default=4)
    parser.add_argument("--sd15-ckpt", type=Path, default=None,
                        help="an SD1.5-size checkpoint to use instead of writing one "
                             "(make_checkpoints.py sd15 --size full)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"server variants to measure (default {','.join(VARIANTS)})")
    parser.add_argument("--no-artifact", action="store_true",
                        help="stop tiered servers after two torch-tier prompts (no compile "
                             "wait: for a box without memory for the compile beside them)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--name", default="serve-tiers")
    args = parser.parse_args()
    variants = tuple(v for v in args.variants.split(",") if v)
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="bench-tiers-"))
    results: dict[str, Any] = {}
    try:
        for model in args.models.split(","):
            if model == "tiny":
                results["tiny"] = measure("tiny", "tiny-digits.safetensors", None, 64,
                                          args.steps, work, variants, not args.no_artifact)
            elif model == "sd15":
                if args.sd15_ckpt is not None:
                    # NOTE: its own models folder (a link out of one is refused, as ComfyUI
                    # confines model names).
                    ckpt = args.sd15_ckpt.resolve()
                    models, name = ckpt.parent.parent, ckpt.name
                else:
                    models, name = work / "models", "sd15-random.safetensors"
                    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
                    started = time.perf_counter()
                    subprocess.run([sys.executable, str(REPO / "bench" / "make_checkpoints.py"),
                                    "sd15", "--size", "full", "-o",
                                    str(models / "checkpoints" / name)], check=True, env=_env())
                    print(f"sd15 checkpoint written in {time.perf_counter() - started:.1f} s",
                          flush=True)
                results["sd15"] = measure("sd15", name, models, args.sd15_size,
                                          args.sd15_steps, work, variants,
                                          not args.no_artifact)
            else:
                parser.error(f"unknown model {model!r}")
            save(args.name, {"results": results})
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
