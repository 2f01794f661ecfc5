"""`comfyc serve` judged by real ComfyUI clients on loopback.

* comfy-api-simplified (PyPI) queues the tiny-model workflow and gets PNGs whose digits the
  independent classifier recognises;
* a replay of ComfyUI's script_examples/websockets_api_example.py with websocket-client gets
  every message, in ComfyUI's order;
* 4 concurrent clients x 5 seeds: all 20 finish with distinct files; an interrupt stops the
  running prompt and the next one runs;
* bad requests and path traversal get the right status and body, and the server keeps going.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websocket  # websocket-client

from .conftest import WORKFLOW, Server, workflow

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _read_until_done(ws: websocket.WebSocket, prompt_ids: set[str],
                     timeout: float = 180) -> list[Any]:
    """Websocket messages until every prompt sent `executing` with node null."""
    ws.settimeout(timeout)
    messages: list[Any] = []
    left = set(prompt_ids)
    while left:
        frame = ws.recv()
        if isinstance(frame, bytes):
            messages.append(frame)
            continue
        message = json.loads(frame)
        messages.append(message)
        data = message.get("data", {})
        if message["type"] == "executing" and data.get("node") is None:
            left.discard(data.get("prompt_id"))
    return messages


def _png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32)[None] / 255.0


def test_comfy_api_simplified_gets_recognisable_digits(server: Server, classifier) -> None:  # type: ignore[no-untyped-def]
    """The PyPI client runs the workflow; every PNG shows the digit asked for."""
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(server.url)
    wf = ComfyWorkflowWrapper(str(WORKFLOW))
    got, expected = [], []
    started = time.perf_counter()
    for seed, digit in [(1, 7), (2, 3), (3, 0)]:
        wf.set_node_param("KSampler", "seed", seed)
        wf.set_node_param("Positive Prompt", "text", f"a handwritten digit {DIGITS[digit]}")
        images = api.queue_and_wait_images(wf, "Save Image")
        assert len(images) == 1, images.keys()
        (png,) = images.values()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        got.append(int(classifier.classify(_png_to_array(png))[0]))
        expected.append(digit)
    print(f"3 prompts in {time.perf_counter() - started:.1f} s")
    assert got == expected
    # Other seeds and prompt texts are one graph shape: one artifact (compiled in the
    # background while the first prompts ran on the torch tier) serves them all.
    texts = {f"a handwritten digit {DIGITS[d]}" for d in expected}
    shapes = {entry["comfyc"]["graph"] for entry in server.request("GET", "/history")[1].values()
              if entry["prompt"][2].get("2", {}).get("inputs", {}).get("text") in texts
              and entry["prompt"][2].get("5", {}).get("inputs", {}).get("seed") in (1, 2, 3)}
    assert len(shapes) == 1
    server.wait_compiled()
    assert (server.cache_dir / f"{shapes.pop()}.comfyc" / "manifest.json").is_file()
    assert api.get_object_info("KSampler")["KSampler"]["input"]["required"]["seed"][0] == "INT"


def test_websocket_example_protocol_in_order(server: Server) -> None:
    """ComfyUI's websockets_api_example.py flow: every message arrives, in ComfyUI's order."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server.host}/ws?clientId={client_id}")
    try:
        hello = json.loads(ws.recv())
        assert hello["type"] == "status" and hello["data"]["sid"] == client_id
        assert "queue_remaining" in hello["data"]["status"]["exec_info"]
        status, body = server.request("POST", "/prompt", {"prompt": workflow(seed=11),
                                                           "client_id": client_id})
        assert status == 200 and body["node_errors"] == {} and isinstance(body["number"], int)
        prompt_id = body["prompt_id"]
        messages = _read_until_done(ws, {prompt_id})
    finally:
        ws.close()
    assert not any(isinstance(m, bytes) for m in messages), "previews were not asked for"
    mine = [m for m in messages if m["data"].get("prompt_id") == prompt_id]
    # A first prompt of its shape compiles: comfyc's own `comfyc.compile` messages come
    # between execution_start and execution_cached.
    everything = [m["type"] for m in mine]
    compiling = [i for i, t in enumerate(everything) if t == "comfyc.compile"]
    assert all(0 < i < everything.index("execution_cached") for i in compiling), everything
    mine = [m for m in mine if m["type"] != "comfyc.compile"]
    types = [m["type"] for m in mine]
    assert types[0] == "execution_start" and types[1] == "execution_cached", types
    assert types[-2:] == ["execution_success", "executing"], types
    assert mine[-1]["data"]["node"] is None
    nodes = [m["data"]["node"] for m in mine if m["type"] == "executing"][:-1]
    assert nodes == sorted(set(nodes), key=nodes.index), "each node executes once"
    assert {"5", "6", "7"} <= set(nodes)
    steps = [m["data"] for m in mine if m["type"] == "progress"]
    assert [s["value"] for s in steps] == list(range(1, 9)) and {s["max"] for s in steps} == {8}
    assert all(s["node"] == "5" for s in steps)
    assert types.index("progress") > nodes.index("5")
    executed = [m["data"] for m in mine if m["type"] == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "7"
    assert types.index("executed") > types.index("progress")
    assert all("timestamp" in m["data"] for m in mine
               if m["type"] in ("execution_start", "execution_cached", "execution_success"))
    # The queue status broadcast comes between execution_success and the final executing.
    last_status = max(i for i, m in enumerate(messages) if m["type"] == "status")
    assert messages.index(mine[-2]) < last_status < messages.index(mine[-1])
    # Then the example reads the history and fetches each image with /view.
    history = server.request("GET", f"/history/{prompt_id}")[1][prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    assert [m[0] for m in history["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]
    assert history["prompt"][1] == prompt_id and len(history["prompt"]) == 5
    for image in history["outputs"]["7"]["images"]:
        query = urllib.parse.urlencode(image | {"type": image["type"]})
        status, png = server.request("GET", f"/view?{query}")
        assert status == 200 and png[:4] == b"\x89PNG"
    # Every route is also served under /api.
    status, body = server.request("GET", f"/api/history/{prompt_id}")
    assert status == 200 and prompt_id in body


def test_previews_only_when_asked(server: Server) -> None:
    """A connection with ?preview=1 gets binary PREVIEW_IMAGE frames (type 1, PNG)."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server.host}/api/ws?clientId={client_id}&preview=1")
    try:
        ws.recv()
        body = server.request("POST", "/api/prompt", {"prompt": workflow(seed=12),
                                                       "client_id": client_id})[1]
        messages = _read_until_done(ws, {body["prompt_id"]})
    finally:
        ws.close()
    frames = [m for m in messages if isinstance(m, bytes)]
    steps = workflow(seed=12)["5"]["inputs"]["steps"]
    assert len(frames) == steps + 1  # A latent preview per step, then the saved image.
    for frame in frames:
        assert frame[:8] == (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
        assert frame[8:12] == b"\x89PNG"
    # Each step's preview comes before that step's progress message.
    kinds = ["frame" if isinstance(m, bytes) else m.get("type") for m in messages
             if isinstance(m, bytes) or m.get("type") in ("progress", "executed")]
    assert kinds[:4] == ["frame", "progress", "frame", "progress"]
    assert kinds[-2:] == ["frame", "executed"]


def test_four_clients_five_prompts_each(server: Server) -> None:
    """20 prompts from 4 concurrent clients all finish, with 20 distinct files on disk."""
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            client_id = str(uuid.uuid4())
            ws = websocket.WebSocket()
            ws.connect(f"ws://{server.host}/ws?clientId={client_id}")
            ws.recv()
            ids = []
            for k in range(5):
                status, body = server.request("POST", "/prompt", {
                    "prompt": workflow(seed=1000 + index * 10 + k,
                                       text=f"a handwritten digit {DIGITS[k]}"),
                    "client_id": client_id})
                assert status == 200, body
                ids.append(body["prompt_id"])
            _read_until_done(ws, set(ids))
            ws.close()
            results[index] = ids
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not errors, errors
    ids = [pid for ids in results.values() for pid in ids]
    assert len(ids) == 20 and len(set(ids)) == 20
    files, digests = set(), set()
    for pid in ids:
        entry = server.wait_history(pid)
        assert entry["status"]["status_str"] == "success", entry["status"]
        (image,) = entry["outputs"]["7"]["images"]
        path = server.output_dir / image["subfolder"] / image["filename"]
        assert path.is_file()
        files.add(path)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(files) == 20 and len(digests) == 20


def test_interrupt_stops_the_running_prompt_and_the_next_runs(server: Server) -> None:
    """POST /interrupt mid-sampling: execution_interrupted, then the queued prompt succeeds."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server.host}/ws?clientId={client_id}")
    try:
        ws.recv()
        # Steps are a runtime param: a long run needs no new compile.
        long_id = server.request("POST", "/prompt", {"prompt": workflow(seed=5, steps=5000),
                                                      "client_id": client_id})[1]["prompt_id"]
        next_id = server.request("POST", "/prompt", {"prompt": workflow(seed=6),
                                                      "client_id": client_id})[1]["prompt_id"]
        queue = server.request("GET", "/queue")[1]
        assert next_id in [item[1] for item in queue["queue_pending"]]
        ws.settimeout(60)
        while True:
            message = json.loads(ws.recv())
            if message["type"] == "progress" and message["data"]["prompt_id"] == long_id:
                break
        assert server.request("POST", "/interrupt", {})[0] == 200
        messages = _read_until_done(ws, {long_id, next_id})
    finally:
        ws.close()
    kinds = [(m["type"], m["data"].get("prompt_id")) for m in messages]
    assert ("execution_interrupted", long_id) in kinds
    assert ("execution_success", next_id) in kinds
    assert kinds.index(("execution_interrupted", long_id)) < kinds.index(
        ("execution_start", next_id))
    steps = [m["data"]["value"] for m in messages
             if m["type"] == "progress" and m["data"]["prompt_id"] == long_id]
    assert max(steps, default=0) < 5000
    stopped = server.wait_history(long_id)
    assert stopped["status"] == {**stopped["status"], "status_str": "error", "completed": False}
    assert server.wait_history(next_id)["status"]["status_str"] == "success"


def test_front_of_queue(server: Server) -> None:
    """`front: true` queues with a negative number, ahead of earlier prompts."""
    status, body = server.request("POST", "/prompt", {"prompt": workflow(seed=21), "front": True})
    assert status == 200 and body["number"] < 0
    server.wait_history(body["prompt_id"])


BAD_PROMPTS = {
    "unknown node": ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "invalid_prompt"),
    "value below min": ("steps", -1),
    "value not in list": ("sampler_name", "not-a-sampler"),
    "wrong type": ("cfg", "lots"),
    "missing checkpoint": ("ckpt_name", "missing.safetensors"),
}


def _bad_prompt(kind: str) -> tuple[dict[str, Any], str]:
    case = BAD_PROMPTS[kind]
    if isinstance(case[0], dict):
        return case[0], case[1]
    name, value = case
    prompt = workflow()
    node = "1" if name == "ckpt_name" else "5"
    prompt[node]["inputs"][name] = value
    return prompt, node


def test_bad_requests_get_400_and_the_server_keeps_serving(server: Server) -> None:
    """Malformed JSON, missing prompt, unknown nodes, bad values: 400 in ComfyUI's shapes."""
    status, body = server.request("POST", "/prompt", raw=b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_json" and body["node_errors"] == {}
    assert "not valid JSON" in body["error"]["message"]
    status, body = server.request("POST", "/prompt", raw=b"[1, 2]")
    assert status == 400 and body["error"]["type"] == "invalid_json"
    status, body = server.request("POST", "/prompt", {"client_id": "x"})
    assert (status, body) == (400, {"error": "no prompt", "node_errors": []})
    status, body = server.request("POST", "/prompt", {"prompt": "text"})
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    for kind in BAD_PROMPTS:
        prompt, where = _bad_prompt(kind)
        status, body = server.request("POST", "/prompt", {"prompt": prompt})
        assert status == 400, (kind, body)
        assert set(body) == {"error", "node_errors"}, (kind, body)
        assert {"type", "message", "details", "extra_info"} <= set(body["error"]), (kind, body)
        if where == "invalid_prompt":
            assert body["error"]["type"] == "invalid_prompt"
            assert "NoSuchNode" in body["error"]["message"]
            continue
        assert body["error"]["type"] == "prompt_outputs_failed_validation", (kind, body)
        errors = body["node_errors"][where]
        assert errors["class_type"] == prompt[where]["class_type"]
        assert errors["errors"][0]["type"] in ("value_smaller_than_min", "value_not_in_list",
                                               "invalid_input_type"), (kind, errors)
        assert errors["errors"][0]["extra_info"]["input_name"]
    status, body = _declare_large_body(server, 2 * 1024 * 1024)
    assert status == 413 and "limit" in body["error"]["message"]
    # Interleaved with all that, the server still answers and runs prompts.
    assert server.request("GET", "/system_stats")[0] == 200
    status, body = server.request("POST", "/prompt", {"prompt": workflow(seed=31)})
    assert status == 200
    assert server.wait_history(body["prompt_id"])["status"]["status_str"] == "success"


def _declare_large_body(server: Server, size: int) -> tuple[int, Any]:
    """POST /prompt declaring a body over the limit: answered before the body is sent."""
    import http.client

    conn = http.client.HTTPConnection(server.host, timeout=30)
    try:
        conn.putrequest("POST", "/prompt")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders(b"{")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _multipart(name: str, data: bytes, fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, format="PNG")
    return out.getvalue()


def test_view_and_upload_are_confined_to_their_folders(server: Server, tmp_path: Path) -> None:
    """`..`, absolute paths and symlinks out are refused; the right files are served."""
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (server.output_dir / "link-out").symlink_to(tmp_path, target_is_directory=True)
    (server.output_dir / "file-link.png").symlink_to(secret)
    for query in [
        {"filename": "../server.log"},
        {"filename": "secret.txt", "subfolder": "../../"},
        {"filename": str(secret)},
        {"filename": "secret.txt", "subfolder": "link-out"},
        {"filename": "file-link.png"},
        {"filename": "..\\server.log"},
        {"filename": "x.png", "type": "input", "subfolder": "/etc"},
    ]:
        status, body = server.request("GET", "/view?" + urllib.parse.urlencode(query))
        assert status == 403, (query, status, body)
        assert body["error"]["type"] == "invalid_path", body
    status, body = server.request("GET", "/view?filename=none.png")
    assert status == 404 and body["error"]["type"] == "not_found"
    status, body = server.request("GET", "/view?filename=a.png&type=system")
    assert status == 400
    status, _ = server.request("GET", "/view")
    assert status == 400

    png = _png()
    for name, fields in [("../evil.png", {}), ("/tmp/evil.png", {}),
                         ("ok.png", {"subfolder": "../.."}), ("ok.png", {"subfolder": "/etc"})]:
        raw, headers = _multipart(name, png, fields)
        status, body = server.request("POST", "/upload/image", raw=raw, headers=headers)
        assert status == 403, (name, fields, status, body)
    assert not (server.input_dir.parent / "evil.png").exists()
    raw, headers = _multipart("notes.png", b"this is not a picture", {})
    status, body = server.request("POST", "/upload/image", raw=raw, headers=headers)
    assert status == 400 and body["error"]["type"] == "invalid_image"
    status, body = server.request("POST", "/upload/image", raw=b"garbage",
                                  headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert status == 400
    raw, headers = _multipart("digit.png", png, {"subfolder": "mine"})
    status, body = server.request("POST", "/api/upload/image", raw=raw, headers=headers)
    assert (status, body) == (200, {"name": "digit.png", "subfolder": "mine", "type": "input"})
    status, body = server.request("POST", "/upload/image", raw=raw, headers=headers)
    assert body["name"] == "digit (1).png"
    query = urllib.parse.urlencode({"filename": "digit.png", "subfolder": "mine",
                                    "type": "input"})
    assert server.request("GET", f"/view?{query}") == (200, png)
    assert server.request("GET", "/system_stats")[0] == 200


def test_info_routes(server: Server) -> None:
    """object_info in ComfyUI's shape, queue/history/free routes, and unknown classes."""
    status, info = server.request("GET", "/object_info")
    assert status == 200 and "KSampler" in info
    ckpt = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    assert "tiny-digits.safetensors" in ckpt[0]
    assert info["SaveImage"]["output_node"] is True
    assert server.request("GET", "/object_info/NoSuchNode") == (200, {})
    status, stats = server.request("GET", "/system_stats")
    assert status == 200 and stats["devices"][0]["type"] == "cpu"
    assert server.request("GET", "/prompt")[1]["exec_info"]["queue_remaining"] >= 0
    assert server.request("POST", "/queue", {"clear": True})[0] == 200
    assert server.request("POST", "/queue", {"delete": "x"})[0] == 400
    assert server.request("POST", "/free", {"unload_models": True})[0] == 200
    history = server.request("GET", "/history?max_items=1")[1]
    assert len(history) <= 1
    assert server.request("GET", "/history?max_items=x")[0] == 400
    assert server.request("GET", "/history/unknown-id") == (200, {})
    assert server.request("POST", "/history", raw=b"{")[0] == 400


def test_precompiled_artifact_and_bearer_token(artifact: Path, tmp_path: Path) -> None:
    """`comfyc serve ARTIFACT --no-compile --token T`: 401 without the token; the artifact's
    workflow runs with a new seed and text; another graph shape is refused with 400."""
    from .conftest import start_server, stop_server

    srv = start_server(tmp_path, tmp_path / "empty-cache", "--token", "s3cret",
                       "--no-compile", str(artifact))
    auth = {"Authorization": "Bearer s3cret"}
    try:
        status, body = srv.request("GET", "/queue")
        assert status == 401 and body["error"]["type"] == "unauthorized"
        assert srv.request("GET", "/queue", headers={"Authorization": "Bearer no"})[0] == 401
        assert srv.request("GET", "/queue", headers=auth)[0] == 200
        prompt = workflow(seed=42, text="a handwritten digit four")
        status, body = srv.request("POST", "/prompt", {"prompt": prompt}, headers=auth)
        assert status == 200, body
        end = time.monotonic() + 60
        entry: dict[str, Any] = {}
        while not entry and time.monotonic() < end:
            entry = srv.request("GET", f"/history/{body['prompt_id']}", headers=auth)[1]
            time.sleep(0.2)
        assert entry[body["prompt_id"]]["status"]["status_str"] == "success"
        assert not list((tmp_path / "empty-cache").glob("*.comfyc")), "nothing was compiled"
        prompt["4"]["inputs"]["width"] = 128
        status, body = srv.request("POST", "/prompt", {"prompt": prompt}, headers=auth)
        assert status == 400 and "precompiled" in body["error"]["message"]
    finally:
        stop_server(srv)


@pytest.mark.parametrize("name", ["a/../../b.png", "/abs.png", "C:\\x.png", "ok/../../x"])
def test_safe_join_refuses_escapes(tmp_path: Path, name: str) -> None:
    """Names that leave the folder raise UnsafePathError."""
    from comfyc.serve.paths import UnsafePathError, safe_join

    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, name)
    assert safe_join(tmp_path, "sub\\x.png") == (tmp_path / "sub" / "x.png").resolve()
