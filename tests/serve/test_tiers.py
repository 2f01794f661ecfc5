"""No cold first prompt (issue #20, items 3 and 5): tiered execution, its log line, /metrics.

A graph shape the server has not compiled runs at once on the torch tier (the workflow lowered
onto PyTorch stages, checkpoints kept loaded) while its artifact compiles in a background
process; the next prompt of the shape runs on the artifact. The pictures agree within the
documented torch/artifact tolerance (2/255: tests/e2e/test_examples_parity.py). Every message
of a prompt says which tier ran it (``comfyc_tier``), the server logs one line per prompt, and
``/metrics`` counts prompts by outcome and tier, with seconds per stage, in Prometheus' text
format.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import numpy as np
import pytest
import websocket  # websocket-client

from .conftest import Server, workflow


def _run(server: Server, prompt: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Queue a prompt on a fresh websocket; (history entry, its messages)."""
    client = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server.host}/ws?clientId={client}")
    try:
        status, body = server.request("POST", "/prompt", {"prompt": prompt,
                                                          "client_id": client})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        ws.settimeout(180)
        messages = []
        while True:
            message = json.loads(ws.recv())
            if message["data"].get("prompt_id") != prompt_id:
                continue
            messages.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    finally:
        ws.close()
    return server.wait_history(prompt_id), messages


def _pictures(server: Server, entry: dict[str, Any]) -> np.ndarray:
    from PIL import Image

    out = []
    for image in entry["outputs"]["7"]["images"]:
        path = server.output_dir / image["subfolder"] / image["filename"]
        with Image.open(path) as picture:
            out.append(np.asarray(picture.convert("RGB"), dtype=np.int16))
    return np.stack(out)


def test_first_prompt_on_torch_then_the_artifact_same_pictures(server: Server) -> None:
    """A new shape (batch of 2): torch tier at once, artifact after the background compile;
    every message says which; the pictures differ by at most 2/255."""
    prompt = workflow(seed=77, text="a handwritten digit three")
    prompt["4"]["inputs"]["batch_size"] = 2  # A literal of the shape: not compiled yet.
    prompt["7"]["inputs"]["filename_prefix"] = "tier_torch"
    first, first_messages = _run(server, prompt)
    assert first["status"]["status_str"] == "success", first["status"]
    assert first["comfyc"]["tier"] == "torch"
    tiers = {m["type"]: m["data"].get("comfyc_tier") for m in first_messages
             if m["type"] != "executing"}
    assert tiers["execution_start"] == tiers["execution_success"] == tiers["executed"] == \
        "torch", tiers
    graph = first["comfyc"]["graph"]

    server.wait_compiled()
    assert (server.cache_dir / f"{graph}.comfyc" / "manifest.json").is_file()
    prompt["7"]["inputs"]["filename_prefix"] = "tier_artifact"
    second, second_messages = _run(server, prompt)
    assert second["comfyc"]["tier"] == "artifact" and second["comfyc"]["graph"] == graph
    assert {m["data"].get("comfyc_tier") for m in second_messages
            if m["type"] in ("execution_start", "executed", "execution_success")} == {"artifact"}

    torch_pictures, artifact_pictures = _pictures(server, first), _pictures(server, second)
    assert torch_pictures.shape == artifact_pictures.shape == (2, 64, 64, 3)
    worst = int(np.abs(torch_pictures - artifact_pictures).max())
    print(f"torch tier {first['comfyc']['total_s']:.2f} s (prepare "
          f"{first['comfyc']['prepare_s']:.2f} s), artifact {second['comfyc']['total_s']:.2f} s;"
          f" largest pixel difference {worst}/255")
    assert worst <= 2

    # One log line per prompt: id, graph hash, tier, seconds, outcome. The server writes it
    # just after it records the prompt's history, so it may land a moment after the client
    # saw the prompt finish.
    for entry, tier in ((first, "torch"), (second, "artifact")):
        pid = entry["prompt"][1]
        line = rf"prompt={pid} graph={graph} tier={tier} seconds=[0-9.]+ outcome=success"
        deadline = time.monotonic() + 15
        while not re.search(line, log := server.log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert re.search(line, log), log[-2000:]


def test_metrics_in_prometheus_text_format(server: Server) -> None:
    """/metrics parses as Prometheus text: queue depth, prompts by outcome and tier, stage
    seconds (histograms), background compiles."""
    parser = pytest.importorskip("prometheus_client.parser")
    status, body = server.request("POST", "/prompt", {"prompt": workflow(seed=3)})
    assert status == 200
    server.wait_history(body["prompt_id"])
    status, raw, kind = server.raw("GET", "/metrics")
    assert status == 200 and kind == "text/plain"
    families = {f.name: f for f in parser.text_string_to_metric_families(raw.decode())}
    assert families["comfyc_queue_pending"].type == "gauge"
    prompts = {(s.labels["outcome"], s.labels["tier"]): s.value
               for s in families["comfyc_prompts"].samples}
    assert sum(v for (outcome, _), v in prompts.items() if outcome == "success") >= 1
    stages = families["comfyc_prompt_stage_seconds"]
    assert stages.type == "histogram"
    names = {s.labels.get("stage") for s in stages.samples}
    assert {"queue", "prepare", "run", "total", "unet"} <= names, names
    counts = [s for s in stages.samples if s.name.endswith("_count")
              and s.labels["stage"] == "total"]
    assert sum(s.value for s in counts) == sum(prompts.values())
    assert "comfyc_compile_seconds" in families
    assert server.request("GET", "/api/metrics")[0] == 404  # Prometheus' path only.



def test_long_prompts_run_on_the_artifact(server: Server) -> None:
    """Issue #19 item 2: prompt texts longer than 75 tokens run on the artifact compiled from a
    one-chunk prompt (its UNet's context length and batch are free: 2 and 4 chunks are
    batched with the negative prompt, 5 run apart from it), where a compiled UNet failed with
    'exported for [2, 77, 64]'. They are the same graph shape: no other compile. (Pictures
    equal the torch path's: tests/e2e/test_long_prompts.py.)"""
    from comfyc.serve.engine import prompt_chunks

    def text(chunks: int) -> str:
        return ", ".join(["a handwritten digit seven drawn in black ink"] * (8 * chunks - 2))

    assert [prompt_chunks(text(n)) for n in (2, 4, 5)] == [2, 4, 5]
    short, _ = _run(server, workflow(seed=5))
    server.wait_compiled()
    for chunks in (2, 4, 5):
        entry, _ = _run(server, workflow(seed=5, text=text(chunks)))
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["comfyc"]["graph"] == short["comfyc"]["graph"]
        assert entry["comfyc"]["tier"] == "artifact"


def test_pinned_backends_key_prompts_by_chunk_count() -> None:
    """Where compiled UNets keep their traced shapes (TensorRT), a text of another chunk count
    is another graph shape (compiled for its context); elsewhere it is the same shape."""
    from comfyc.serve.engine import shape_key

    long_text = ", ".join(["a handwritten digit seven drawn in black ink"] * 14)
    short, long_ = workflow(text="a handwritten digit seven"), workflow(text=long_text)
    other_short = workflow(text="a digit one")
    assert shape_key(short) != shape_key(long_)
    assert shape_key(short) == shape_key(other_short)
    assert shape_key(short, free_context=True) == shape_key(long_, free_context=True)


def _compile_processes(server: Server) -> list[int]:
    """Process ids of the server's compile process(es) (children running compile_job)."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.process.pid and b"comfyc.serve.compile_job" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_killed_compile_process_is_replaced(server: Server) -> None:
    """The background compile process killed mid-compile: the compile runs again in a new
    process, the artifact arrives, nothing half-written is left, and the shape's next prompt
    runs on it (the torch tier served it meanwhile)."""
    import os
    import signal
    import time

    prompt = workflow(seed=9)
    prompt["4"]["inputs"]["width"] = 72  # A new shape.
    first, _ = _run(server, prompt)
    assert first["comfyc"]["tier"] == "torch"
    key = first["comfyc"]["graph"]
    end = time.monotonic() + 120
    victims: list[int] = []
    while not victims and time.monotonic() < end:
        tiers = server.request("GET", "/system_stats")[1]["system"]["comfyc"]["tiers"]
        if tiers["compiling"].get(key) == "compiling":
            victims = _compile_processes(server)
        time.sleep(0.1)
    assert victims, "the shape's background compile never started"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    server.wait_compiled()
    tiers = server.request("GET", "/system_stats")[1]["system"]["comfyc"]["tiers"]
    assert key not in tiers["compile_failed"], tiers
    assert (server.cache_dir / f"{key}.comfyc" / "manifest.json").is_file()
    assert not list(server.cache_dir.glob(f".{key}.comfyc.*")), "a killed compile's folder"
    assert not set(_compile_processes(server)) & set(victims)
    second, _ = _run(server, prompt)
    assert second["comfyc"]["tier"] == "artifact" and second["comfyc"]["graph"] == key
