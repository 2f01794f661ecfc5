"""Issue 19: `comfyc serve` under load from clients that each save under their own prefix.

Starts a real `comfyc serve` on loopback with an empty artifact cache, sends one prompt (the
compile), then runs --clients concurrent ComfyUI-style websocket clients, each sending
--prompts prompts one after the other, every prompt with its own ``filename_prefix``
(``c{client}/p{prompt}``) and seed. Measured: how many artifacts the cache holds afterwards
(before issue 19 every new prefix compiled and kept another 22 MB artifact), the cache's size,
latency POST -> ``executing {node: null}`` (p50, p95), throughput, and that every prompt wrote
its own file.

    python bench/bench_serve_load.py [--clients 8] [--prompts 10] [--steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common import REPO, python, save

WORKFLOW = REPO / "tests" / "serve" / "txt2img_api.json"


def prompt(seed: int, steps: int, prefix: str) -> dict[str, Any]:
    """The tiny-model txt2img API prompt with a seed, steps and a filename prefix."""
    data = json.loads(WORKFLOW.read_text())
    data["5"]["inputs"].update(seed=seed, steps=steps)
    data["7"]["inputs"]["filename_prefix"] = prefix
    return data


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(folder: Path, cache: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`comfyc serve` in its own process group, answering on ``port``."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(folder / f"server-{time.time_ns()}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [python(), "-m", "comfyc.cli.main", "serve", "--port", str(port), "--output",
         str(folder / "output"), "--input-dir", str(folder / "input"), "--cache-dir",
         str(cache), *extra], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
        start_new_session=True)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"comfyc serve exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5).read()
            return process
        except OSError:
            time.sleep(0.2)
    raise SystemExit("comfyc serve did not answer")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL whatever is left of the process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def request(port: int, method: str, path: str, body: Any = None) -> Any:
    """One JSON request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def run_and_wait(port: int, data: dict[str, Any]) -> tuple[float, str]:
    """POST a prompt and read the websocket until its ``executing null``: (latency, id)."""
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.WebSocket()
    ws.connect(f"ws://127.0.0.1:{port}/ws?clientId={client_id}")
    try:
        ws.recv()
        started = time.perf_counter()
        prompt_id = request(port, "POST", "/prompt", {"prompt": data,
                                                      "client_id": client_id})["prompt_id"]
        ws.settimeout(600)
        while True:
            frame = ws.recv()
            if isinstance(frame, bytes):
                continue
            message = json.loads(frame)
            payload = message.get("data", {})
            if (message["type"] == "executing" and payload.get("node") is None
                    and payload.get("prompt_id") == prompt_id):
                return time.perf_counter() - started, prompt_id
    finally:
        ws.close()


def cache_stats(cache: Path) -> dict[str, int]:
    """Artifacts in the cache folder and their bytes."""
    artifacts = list(cache.glob("*.comfyc"))
    size = sum(f.stat().st_size for a in artifacts for f in a.rglob("*") if f.is_file())
    return {"artifacts": len(artifacts), "bytes": size}


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    """Run the load and print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--name", default="serve-load")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="comfyc-load-"))
    cache = folder / "cache"
    port = free_port()
    load_before = os.getloadavg()
    process = start(folder, cache, port)
    try:
        started = time.perf_counter()
        run_and_wait(port, prompt(1, args.steps, "warmup"))
        first_s = time.perf_counter() - started
        after_first = cache_stats(cache)
        latencies: list[float] = []
        ids: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            try:
                for k in range(args.prompts):
                    latency, prompt_id = run_and_wait(
                        port, prompt(1000 * index + k, args.steps, f"c{index}/p{k}"))
                    with lock:
                        latencies.append(latency)
                        ids.append(prompt_id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        wall = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
        if errors:
            raise errors[0]
        history = request(port, "GET", "/history")
        statuses = [history[pid]["status"]["status_str"] for pid in ids]
        files = {(img["subfolder"], img["filename"]) for pid in ids
                 for out in history[pid]["outputs"].values() for img in out["images"]}
        on_disk = sum(1 for p in (folder / "output").rglob("*.png")
                      if p.parent.name.startswith("c"))
        stats = request(port, "GET", "/system_stats")["system"]["comfyc"]["cache"]
    finally:
        stop(process)
    after = cache_stats(cache)
    result = {
        "clients": args.clients, "prompts_per_client": args.prompts, "steps": args.steps,
        "first_request_s": first_s, "cache_after_first": after_first, "cache_after": after,
        "server_cache_stats": stats, "prompts": len(latencies),
        "success": statuses.count("success"), "distinct_files": len(files),
        "files_on_disk": on_disk, "wall_s": wall, "images_per_s": len(latencies) / wall,
        "p50_s": statistics.median(latencies), "p95_s": pct(latencies, 0.95),
        "max_s": max(latencies), "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(), "latencies_s": latencies,
    }
    path = save(args.name, result)
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}, indent=2))
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
