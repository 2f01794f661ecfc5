"""Issue 19: prompts accepted before a `kill -9` of `comfyc serve` finish after the restart.

Starts a real `comfyc serve` (its artifact compiled first), POSTs --prompts prompts, and while
it works through them kills its whole process group with SIGKILL --kills times, each time
after a few more prompts finished, restarting it on the same cache folder and port. Counted:
prompts accepted (200) before each kill, finished before it, finished after the restart,
lost (accepted but never finished, or reported ``comfyc.lost``), time from restart to the
first answer and to an empty queue. Before issue 19, 358 of 390 accepted prompts were lost and
``/history/{id}`` answered ``{}`` for them forever.

    python bench/bench_restart.py [--prompts 60] [--kills 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_serve_load import free_port, prompt, request, start, stop
from common import save


def finished(port: int, ids: list[str]) -> dict[str, dict]:
    """History entries of the given prompts that finished."""
    history = request(port, "GET", "/history")
    return {pid: history[pid] for pid in ids if pid in history}


def main() -> None:
    """Run the kills and restarts and print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5,
                        help="prompts that finish between restarts and the next kill")
    parser.add_argument("--name", default="serve-restart")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="comfyc-restart-"))
    cache = folder / "cache"
    port = free_port()
    load_before = os.getloadavg()
    process = start(folder, cache, port)
    rounds = []
    try:
        pid = request(port, "POST", "/prompt", {"prompt": prompt(0, 1, "warmup")})["prompt_id"]
        while not finished(port, [pid]):
            time.sleep(0.2)  # The compile.
        ids = [request(port, "POST", "/prompt", {"prompt": prompt(seed, args.steps, "r")}
                       )["prompt_id"] for seed in range(1, args.prompts + 1)]
        for _ in range(args.kills):
            done_before = len(finished(port, ids))
            while len(finished(port, ids)) < done_before + args.every:
                time.sleep(0.02)
            queue = request(port, "GET", "/queue")
            done = len(finished(port, ids))
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            killed = time.perf_counter()
            process = start(folder, cache, port)
            answered = time.perf_counter() - killed
            recovered = request(port, "GET", "/system_stats")["system"]["comfyc"]["recovered"]
            rounds.append({
                "accepted": len(ids), "finished_before_kill": done,
                "pending_at_kill": len(queue["queue_pending"]),
                "running_at_kill": len(queue["queue_running"]),
                "restart_to_first_answer_s": answered, "recovered": recovered})
        restarted = time.perf_counter()
        end = time.monotonic() + 1800
        while len(finished(port, ids)) < len(ids) and time.monotonic() < end:
            time.sleep(0.2)
        drain_s = time.perf_counter() - restarted
        entries = finished(port, ids)
        states = [request(port, "GET", f"/comfyc/prompts/{p}")["state"] for p in ids]
    finally:
        stop(process)
    statuses = [e["status"]["status_str"] for e in entries.values()]
    last_kill = rounds[-1]["finished_before_kill"] if rounds else 0
    result = {
        "prompts": args.prompts, "steps": args.steps, "kills": args.kills, "rounds": rounds,
        "finished": len(entries), "success": statuses.count("success"),
        "finished_after_last_restart": len(entries) - last_kill,
        "re_run": sum(1 for e in entries.values() if e["comfyc"].get("attempt", 1) > 1),
        "lost": len(ids) - len(entries) + states.count("lost"),
        "last_restart_to_empty_queue_s": drain_s, "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
    }
    path = save(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
