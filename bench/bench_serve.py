"""Issue 9: `comfyc serve` against calling the runtime directly, on the tiny model.

Starts a real `comfyc serve` subprocess on loopback with an empty artifact cache, then:
  * first request: POST /prompt of the tiny-model txt2img API workflow (64x64, Euler/normal,
    --steps, cfg 5) until its `executing null`, compile included (the compile time itself is
    read from the server's `comfyc.compile` messages);
  * cached request: another seed and prompt text (same graph shape: no compile);
  * concurrency 1 and 4: --requests prompts (distinct seeds) from 1 client, then from 4
    concurrent clients (each waits for its prompt, then sends the next); latency is POST to
    `executing null` on the client's websocket, throughput is images / wall time;
  * direct: the same artifact loaded in this process (comfyc.runtime.load) and run with the
    same params, sequentially (concurrency 1) and from 4 threads sharing the program behind a
    lock (what the server's one-worker-per-model does).
Server and direct runs alternate, so that both see the same load on a shared box. Overhead:
the server's own time per request (latency minus program.run, at concurrency 1), and the
ratios server / direct of p50 latency (concurrency 1) and direct / server of images/s
(concurrency 4).

    python bench/bench_serve.py [--requests 12] [--steps 20] [--ray] [--name serve]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, ClassVar

from common import REPO, save

sys.path.insert(0, str(REPO))

WORKFLOW = REPO / "tests" / "serve" / "txt2img_api.json"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _prompt(seed: int, steps: int) -> dict[str, Any]:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["5"]["inputs"].update(seed=seed, steps=steps)
    prompt["2"]["inputs"]["text"] = f"a handwritten digit {DIGITS[seed % 10]}"
    return prompt


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {"images": len(latencies), "wall_s": wall, "images_per_s": len(latencies) / wall,
            "p50_s": statistics.median(latencies), "p95_s": _pct(latencies, 0.95)}


class Client:
    """One websocket client of the server (websocket-client), as ComfyUI's example."""

    #: (client latency, the history entry's comfyc timings) of every request.
    overheads: ClassVar[list[tuple[float, dict[str, float]]]] = []

    def __init__(self, host: str) -> None:
        import websocket

        self.host = host
        self.client_id = str(uuid.uuid4())
        self.ws = websocket.WebSocket()
        self.ws.connect(f"ws://{host}/ws?clientId={self.client_id}")
        self.ws.recv()  # status on connect

    def run(self, prompt: dict[str, Any]) -> tuple[float, list[str]]:
        """Latency of one prompt (POST to `executing null`) and its compile messages.

        The server's own time outside ``program.run`` (HTTP, validation, queue, websocket)
        is appended to :attr:`overheads`, from the prompt's history entry.
        """
        started = time.perf_counter()
        req = urllib.request.Request(
            f"http://{self.host}/prompt",
            data=json.dumps({"prompt": prompt, "client_id": self.client_id}).encode())
        with urllib.request.urlopen(req) as resp:
            prompt_id = json.loads(resp.read())["prompt_id"]
        compile_messages = []
        while True:
            frame = self.ws.recv()
            if not isinstance(frame, str):
                continue
            message = json.loads(frame)
            data = message["data"]
            if message["type"] == "comfyc.compile" and data["prompt_id"] == prompt_id:
                compile_messages.append(data["message"])
            if message["type"] == "execution_error" and data["prompt_id"] == prompt_id:
                raise RuntimeError(data["exception_message"])
            if (message["type"] == "executing" and data["node"] is None
                    and data["prompt_id"] == prompt_id):
                latency = time.perf_counter() - started
                with urllib.request.urlopen(f"http://{self.host}/history/{prompt_id}") as resp:
                    facts = json.loads(resp.read())[prompt_id]["comfyc"]
                Client.overheads.append((latency, facts))
                return latency, compile_messages

    def close(self) -> None:
        self.ws.close()


def _concurrent(worker: Any, clients: int, total: int) -> dict[str, float]:
    """Run ``total`` requests from ``clients`` threads; ``worker(client_index, k)`` → s."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [list(range(i, total, clients)) for i in range(clients)]

    def loop(index: int) -> None:
        for k in per_client[index]:
            latency = worker(index, k)
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**_summary(latencies, time.perf_counter() - started), "latencies": latencies}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ray", action="store_true", help="serve with --ray --replicas 2")
    parser.add_argument("--name", default="serve")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    port = _free_port()
    host = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cmd = [sys.executable, "-m", "comfyc.cli.main", "serve", "--port", str(port),
           "--output", str(tmp / "out"), "--input-dir", str(tmp / "in"),
           "--cache-dir", str(tmp / "cache")] + (["--ray", "--replicas", "2"] if args.ray else [])
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    results: dict[str, Any] = {"steps": args.steps, "requests": args.requests,
                               "mode": "ray-2-replicas" if args.ray else "local"}
    try:
        started = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://{host}/system_stats", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit((tmp / "server.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        results["server_start_s"] = time.perf_counter() - started

        client = Client(host)
        first, messages = client.run(_prompt(1, args.steps))
        wrote = next((m for m in reversed(messages) if m.startswith("wrote ")), "")
        results["first_request_s"] = first
        results["compile_s"] = float(wrote.rsplit(" in ", 1)[1].split()[0]) if wrote else None
        cached = [client.run(_prompt(2 + i, args.steps))[0] for i in range(3)]
        results["cached_request_s"] = statistics.median(cached)

        # Direct: the artifact the server compiled, loaded in this process, same params.
        from comfyc.serve.engine import Engine

        engine = Engine(tmp / "cache", input_dir=tmp / "in")
        out = tmp / "direct"
        lock = threading.Lock()

        def direct(index: int, k: int) -> float:
            t0 = time.perf_counter()
            prepared = engine.prepare(_prompt(k, args.steps))
            with lock:
                prepared.program.run(prepared.params, output_dir=out)
            return time.perf_counter() - t0

        direct(0, 0)  # load the program and warm its sessions, as the server's first request

        # NOTE: the box is shared, so server and direct runs alternate (one request each at
        # concurrency 1; one round of 4 each at concurrency 4) and see the same load.
        seeds = iter(range(100, 100000))
        clients = [client] + [Client(host) for _ in range(3)]
        Client.overheads.clear()
        c1: dict[str, list[Any]] = {"server": [], "direct": []}
        for _ in range(args.requests):
            c1["server"].append(
                _concurrent(lambda i, _: client.run(_prompt(next(seeds), args.steps))[0], 1, 1))
            c1["direct"].append(_concurrent(lambda i, _: direct(i, next(seeds)), 1, 1))
        # NOTE: at concurrency 1 nothing queues, so latency - run time is the server's own
        # cost per request: HTTP + validation + queue hand-off + websocket messages.
        overhead = {"overhead_ms_p50": 1000 * statistics.median(
                        lat - facts["run_s"] for lat, facts in Client.overheads),
                    "run_s_p50": statistics.median(f["run_s"] for _, f in Client.overheads)}
        c4: dict[str, list[Any]] = {"server": [], "direct": []}
        for _ in range(max(1, args.requests // 4)):
            c4["server"].append(_concurrent(
                lambda i, _: clients[i].run(_prompt(next(seeds), args.steps))[0], 4, 4))
            c4["direct"].append(_concurrent(lambda i, _: direct(i, next(seeds)), 4, 4))
        for c in clients:
            c.close()
        for name, rounds in (("c1", c1), ("c4", c4)):
            for side, rows in rounds.items():
                latencies = [lat for row in rows for lat in row["latencies"]]
                results[f"{side}_{name}"] = _summary(latencies, sum(r["wall_s"] for r in rows))
        results["server_c1"].update(overhead)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    results["overhead_latency_ratio_c1"] = (results["server_c1"]["p50_s"]
                                            / results["direct_c1"]["p50_s"])
    results["overhead_throughput_ratio_c4"] = (results["direct_c4"]["images_per_s"]
                                               / results["server_c4"]["images_per_s"])
    shutil.rmtree(tmp, ignore_errors=True)
    path = save(args.name, results)

    print(f"{'':<18}{'images/s':>10}{'p50 s':>9}{'p95 s':>9}")
    for key in ("server_c1", "direct_c1", "server_c4", "direct_c4"):
        row = results[key]
        print(f"{key:<18}{row['images_per_s']:>10.2f}{row['p50_s']:>9.3f}{row['p95_s']:>9.3f}")
    print(f"first request (compile included) {results['first_request_s']:.1f} s, compile "
          f"{results['compile_s']} s; cached request {results['cached_request_s']:.3f} s")
    print(f"server's own time per request at c=1 (latency - program.run): "
          f"{results['server_c1']['overhead_ms_p50']:.1f} ms p50 (run "
          f"{results['server_c1']['run_s_p50']:.3f} s)")
    print(f"overhead: latency x{results['overhead_latency_ratio_c1']:.2f} (c=1), "
          f"throughput x{results['overhead_throughput_ratio_c4']:.2f} (c=4); wrote {path}")


if __name__ == "__main__":
    main()
