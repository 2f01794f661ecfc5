"""ComfyUI's web page on `comfyc serve`: the routes it calls, and the page in a real browser.

* every route the page calls at start answers as ComfyUI answers (user settings and
  workflows in the user's folder, confined like /view; jobs; models; features answered as
  ComfyUI answers with the feature off);
* node classes comfyc cannot run are marked the page's own way (deprecated: hidden from
  search, badged on the canvas; named and described as not available);
* headless Chromium (Debian's, installed by the Makefile's `chromium` target) opens the page,
  a PNG carrying the tiny-model workflow is dropped on the canvas, the page's Run button
  queues it, and the Save Image node shows a PNG whose digit the classifier reads — with no
  error in the browser's console.

The browser is driven over the DevTools protocol (tests/serve/cdp.py says why).
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .cdp import Browser, CdpError, find_chromium
from .conftest import WORKFLOW, Server

#: Console errors the frontend itself logs on every start with ComfyUI too (not caused by a
#: server's answer): frontend 1.47's app-mode store reads the graph before it exists.
KNOWN_FRONTEND_ERRORS = ("ComfyApp graph accessed before initialization",)


def _has_page(server: Server) -> bool:
    status, body, kind = server.raw("GET", "/")
    return status == 200 and kind == "text/html" and b"vue-app" in body


@pytest.fixture(scope="module")
def page_server(server: Server) -> Server:
    """The session server, when the frontend package is installed (the `web` extra)."""
    if not _has_page(server):
        pytest.skip("comfyui-frontend-package is not installed (pip install comfyc[web])")
    return server


# ------------------------------------------------------------------------------ routes
def test_api_only_server_answers_json_at_root(server: Server) -> None:
    """Without the page, / still says what the server is (with it, the page is there)."""
    status, body, kind = server.raw("GET", "/")
    assert status == 200
    if kind == "application/json":
        assert json.loads(body)["server"] == "comfyc"
    else:
        assert kind == "text/html" and b"<title>ComfyUI</title>" in body


def test_start_routes_answer_as_comfyui(page_server: Server) -> None:
    """What the page reads at start: shapes it parses, never an error status."""
    srv = page_server
    users = srv.request("GET", "/api/users")[1]
    assert users["storage"] == "server" and isinstance(users["migrated"], bool)
    features = srv.request("GET", "/api/features")[1]
    assert features["assets"] is False and features["max_upload_size"] > 0
    extensions = srv.request("GET", "/api/extensions")[1]
    assert isinstance(extensions, list) and all(e.startswith("/extensions/") for e in extensions)
    for path in ("/api/i18n", "/api/workflow_templates", "/api/node_replacements",
                 "/api/global_subgraphs", "/internal/folder_paths"):
        assert srv.request("GET", path) == (200, {}), path
    assert srv.request("GET", "/templates/index.json") == (200, [])
    assert srv.request("GET", "/templates/no-such.json")[0] == 404
    status, css, kind = srv.raw("GET", "/api/userdata/user.css")
    assert (status, kind) == (200, "text/css")
    stats = srv.request("GET", "/api/system_stats")[1]["system"]
    assert "--disable-api-nodes" in stats["argv"] and stats["required_frontend_version"]
    folders = srv.request("GET", "/api/experiment/models")[1]
    assert {"name": "checkpoints", "folders": ["<models>/checkpoints"]}.items() <= \
        next(f for f in folders if f["name"] == "checkpoints").items()
    models = srv.request("GET", "/api/experiment/models/checkpoints")[1]
    tiny = next(m for m in models if m["name"] == "tiny-digits.safetensors")
    assert tiny["pathIndex"] == 0 and tiny["size"] > 0
    assert srv.request("GET", "/api/experiment/models/nope")[0] == 404
    jobs = srv.request("GET", "/api/jobs?status=completed,failed&limit=5&offset=0")[1]
    assert set(jobs) == {"jobs", "pagination"} and jobs["pagination"]["limit"] == 5
    assert srv.request("GET", "/api/jobs?status=bogus")[0] == 400
    files = srv.request("GET", "/internal/files/output")[1]
    assert all(f.endswith(" [output]") for f in files)
    # Static files of the page, never outside its folder.
    assert srv.raw("GET", "/assets/../index.html")[0] in (200, 404)
    assert srv.raw("GET", "/%2e%2e/%2e%2e/etc/passwd")[0] == 404


def test_settings_and_workflows_live_in_the_user_folder(page_server: Server) -> None:
    """Settings merge and persist; workflows are stored, listed, moved, read and deleted;
    names that leave the user's folder are refused."""
    srv = page_server
    assert srv.request("POST", "/api/settings", {"Comfy.Test.A": 1, "Comfy.Test.B": "x"})[0] \
        == 200
    assert srv.request("POST", "/api/settings/Comfy.Test.A", 2)[0] == 200
    settings = srv.request("GET", "/api/settings")[1]
    assert settings["Comfy.Test.A"] == 2 and settings["Comfy.Test.B"] == "x"
    assert srv.request("GET", "/api/settings/Comfy.Test.B") == (200, "x")
    assert srv.request("GET", "/api/settings/Comfy.Test.Unset") == (200, None)

    workflow = {"nodes": [], "links": [], "version": 0.4}
    name = urllib.parse.quote("workflows/mine.json", safe="")
    status, answer = srv.request("POST", f"/api/userdata/{name}?overwrite=true&full_info=true",
                                 raw=json.dumps(workflow).encode())
    assert status == 200 and answer["path"] == "workflows/mine.json" and answer["size"] > 0
    status, _ = srv.request("POST", f"/api/userdata/{name}?overwrite=false",
                            raw=b"{}")
    assert status == 409
    listing = srv.request("GET", "/api/userdata?dir=workflows&recurse=true&split=false"
                                 "&full_info=true")[1]
    assert [e["path"] for e in listing] == ["mine.json"]
    status, body, _ = srv.raw("GET", f"/api/userdata/{name}")
    assert status == 200 and json.loads(body) == workflow
    moved = urllib.parse.quote("workflows/sub/renamed.json", safe="")
    status, answer = srv.request("POST", f"/api/userdata/{name}/move/{moved}")
    assert status == 200 and answer == "workflows/sub/renamed.json"
    tree = srv.request("GET", "/api/v2/userdata?path=workflows")[1]
    assert {"name": "sub", "path": "workflows/sub", "type": "directory"} in tree
    assert srv.raw("DELETE", f"/api/userdata/{moved}")[0] == 204
    assert srv.raw("GET", f"/api/userdata/{moved}")[0] == 404
    for bad in ("../escape.json", "..%2F..%2Fescape.json", "/etc/passwd", "a/../../b.json"):
        status, _, _ = srv.raw("POST", f"/api/userdata/{urllib.parse.quote(bad, safe='%')}",
                               b"{}")
        assert status in (400, 403, 404), (bad, status)
    assert not list(srv.log.parent.glob("escape.json"))
    assert srv.raw("GET", "/api/userdata?dir=..")[0] == 403
    # Served as a download, never as a page of the server's origin.
    html = urllib.parse.quote("workflows/x.html", safe="")
    srv.request("POST", f"/api/userdata/{html}", raw=b"<script>alert(1)</script>")
    status, _, kind = srv.raw("GET", f"/api/userdata/{html}")
    assert status == 200 and kind == "application/octet-stream"


def test_unavailable_nodes_are_marked_the_pages_way(page_server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Classes comfyc cannot run (check-only in the node registry): deprecated (hidden from
    search, [DEPR] on the canvas), named "not available in comfyc", the reason as their
    description; prompts using them are refused at /prompt with that reason on the node."""
    from types import SimpleNamespace

    from comfyc.runtime.nodes import registry
    from comfyc.serve import app

    info = page_server.request("GET", "/object_info")[1]
    runnable = info["KSampler"]
    assert "deprecated" not in runnable and runnable["display_name"] == "KSampler"
    unavailable = [n for n in registry() if n.check_only and n.class_type in info]
    for node in unavailable:  # Whatever the registry cannot run today.
        entry = info[node.class_type]
        assert entry["deprecated"] is True
        assert entry["display_name"].endswith("(not available in comfyc)")
        assert entry["description"] == f"Not available in comfyc: {node.check_only}"
    # The marking itself, on a class made check-only here (the registry's set changes as
    # comfyc learns to run more nodes).
    reason = "ControlNet models are not supported by comfyc yet"
    fake = SimpleNamespace(get=lambda name: SimpleNamespace(
        check_only=reason if name == "ControlNetLoader" else None))
    monkeypatch.setattr("comfyc.runtime.nodes.registry", lambda: fake)
    marked = app.mark_unavailable({"ControlNetLoader": info["ControlNetLoader"],
                                   "KSampler": runnable})
    assert marked["ControlNetLoader"]["deprecated"] is True
    assert marked["ControlNetLoader"]["display_name"] == \
        info["ControlNetLoader"]["display_name"] + " (not available in comfyc)"
    assert marked["ControlNetLoader"]["description"] == f"Not available in comfyc: {reason}"
    assert marked["KSampler"] == runnable
    if unavailable:
        node = unavailable[0]
        prompt = json.loads(WORKFLOW.read_text())
        schema = info[node.class_type]["input"]
        prompt["9"] = {"class_type": node.class_type, "inputs": {
            name: (spec[0][0] if isinstance(spec[0], list) and spec[0] else 1)
            for name, spec in schema.get("required", {}).items()
            if not (isinstance(spec[0], str) and spec[0].isupper() and spec[0] not in (
                "INT", "FLOAT", "STRING", "BOOLEAN"))}}
        status, body = page_server.request("POST", "/prompt", {"prompt": prompt})
        assert status == 400 and body["node_errors"], body


def test_jobs_and_cancel(page_server: Server) -> None:
    """A finished prompt is a completed job with its preview; cancelling it changes nothing."""
    srv = page_server
    status, body = srv.request("POST", "/prompt", {"prompt": json.loads(WORKFLOW.read_text())})
    assert status == 200
    srv.wait_history(body["prompt_id"])
    job = srv.request("GET", f"/api/jobs/{body['prompt_id']}")[1]
    assert job["status"] == "completed" and job["outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "7" and job["create_time"] > 0
    assert job["workflow"]["prompt"]["5"]["class_type"] == "KSampler"
    listed = srv.request("GET", "/api/jobs?status=completed&limit=200")[1]["jobs"]
    assert body["prompt_id"] in [j["id"] for j in listed]
    assert srv.request("POST", f"/api/jobs/{body['prompt_id']}/cancel")[1] == {
        "cancelled": False}
    assert srv.request("GET", "/api/jobs/no-such-job")[0] == 404


# ----------------------------------------------------------------------------- browser
def _workflow_png(tmp: Path) -> Path:
    """A PNG carrying the tiny-model txt2img workflow (API format) in its text chunk, as
    ComfyUI's own outputs carry it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    prompt = json.loads(WORKFLOW.read_text())
    prompt["5"]["inputs"]["seed"] = 1
    prompt["7"]["inputs"]["filename_prefix"] = "browser"
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    path = tmp / "tiny-digits-workflow.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


def _posted(browser: Browser) -> bool:
    """Whether the page has queued a prompt (POST /api/prompt answered 200)."""
    return any(status == 200 and method == "POST" and url.endswith("/api/prompt")
               for status, method, url in browser.responses)


def _png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32)[None] / 255.0


def test_page_in_chromium_runs_a_dropped_workflow(page_server: Server, classifier: Any,
                                                  tmp_path: Path) -> None:
    """Open the page, drop a workflow PNG, press Run: the Save Image node shows a seven."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (run `make chromium` as root, or `make test`)")
    browser = Browser(chromium, tmp_path / "profile")
    try:
        started = time.monotonic()
        browser.navigate(page_server.url + "/")
        browser.wait_for("!!(window.app && window.app.isGraphReady && window.app.canvas)",
                         120, "the page to start")
        loaded = time.monotonic() - started
        # A new user gets the page's template browser first: close it, as a user would.
        time.sleep(1.0)
        for kind in ("keyDown", "keyUp"):
            browser.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape",
                         windowsVirtualKeyCode=27)
        browser.wait_for("document.querySelectorAll('[role=dialog]').length === 0", 20,
                         "the dialog to close")
        # Drag the PNG from "the desktop" onto the canvas.
        png = _workflow_png(tmp_path)
        for kind in ("dragEnter", "dragOver", "drop"):
            browser.call("Input.dispatchDragEvent", type=kind, x=800, y=500, data={
                "items": [], "files": [str(png)], "dragOperationsMask": 1})
        browser.wait_for("window.app.graph.nodes.some(n => n.type === 'SaveImage') && "
                         "window.app.graph.nodes.length === 7", 90, "the workflow to load")
        ckpt = browser.evaluate("window.app.graph.nodes.find(n => n.type === "
                                "'CheckpointLoaderSimple').widgets[0].value")
        assert ckpt == "tiny-digits.safetensors"
        # Press the page's Run button (a real mouse click at its place on screen).
        button = "document.querySelector('[data-testid=queue-button]')"
        browser.wait_for(f"{button} && !{button}.disabled", 90, "the Run button")
        x, y = browser.evaluate(
            f"(() => {{ const r = {button}.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        queued = time.monotonic()
        for _ in range(3):
            browser.click(x, y)
            end = time.monotonic() + 10
            while time.monotonic() < end and not _posted(browser):
                time.sleep(0.2)
            if _posted(browser):
                break
        assert _posted(browser), "the Run button queued nothing"
        src = browser.wait_for(
            "(() => { const n = window.app.graph.nodes.find(n => n.type === 'SaveImage');"
            " const i = n && n.imgs && n.imgs[0];"
            " return i && i.complete && i.naturalWidth > 0 ? i.src : null; })()",
            180, "the Save Image node to show the picture")
        shown = time.monotonic() - queued
        browser.screenshot(tmp_path / "page.png")
        url = urllib.parse.urlparse(src)
        query = urllib.parse.parse_qs(url.query)
        assert url.path == "/api/view" and query["type"] == ["output"]
        assert query["filename"][0].startswith("browser_")
        status, png_bytes, kind = page_server.raw("GET", f"{url.path}?{url.query}")
        assert status == 200 and kind == "image/png" and png_bytes[:4] == b"\x89PNG"
        digit = int(classifier.classify(_png_to_array(png_bytes))[0])
        print(f"page ready in {loaded:.1f} s; picture shown {shown:.1f} s after Run; "
              f"digit {digit}; {len(browser.responses)} responses")
        assert digit == 7
        failed = [(s, m, u) for s, m, u in browser.responses
                  if s >= 400 and u.startswith(page_server.url)]
        assert not failed, failed
        assert not browser.failures, browser.failures
        errors = [(level, text) for level, text in browser.console
                  if level in ("error", "exception", "assert", "log-error")
                  and not text.startswith(KNOWN_FRONTEND_ERRORS)]
        assert not errors, errors
    except CdpError as exc:
        browser.screenshot(tmp_path / "failed.png")
        raise AssertionError(f"{exc}\nconsole: {browser.console[-20:]}") from exc
    finally:
        browser.close()
