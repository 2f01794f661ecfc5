"""A real `comfyc serve` subprocess on loopback, shared by the server tests.

One server (and one compile of the tiny-model workflow into a session cache folder, which
the restart, fuzz and Ray tests reuse) for the whole session; outputs and inputs live under
pytest's tmp dirs. The first prompt of a graph shape runs on the torch tier while its artifact
compiles in the background (:meth:`Server.wait_compiled` waits for that).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "txt2img_api.json"
REPO = HERE.parents[1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workflow(seed: int = 1, text: str = "a handwritten digit seven",
             steps: int | None = None) -> dict[str, Any]:
    """The tiny-model txt2img API prompt (8 steps) with a seed and a positive prompt."""
    prompt = json.loads(WORKFLOW.read_text())
    prompt["5"]["inputs"]["seed"] = seed
    prompt["2"]["inputs"]["text"] = text
    if steps is not None:
        prompt["5"]["inputs"]["steps"] = steps
    return prompt


@dataclass
class Server:
    """A running server: its URL and folders."""

    url: str
    host: str
    output_dir: Path
    input_dir: Path
    cache_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    auth: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None, *,
                raw: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, Any]:
        """(status, parsed JSON or bytes) of one request (with :attr:`auth` unless ``headers``
        are given)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=self.auth if headers is None else headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, payload, kind = resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            status, payload, kind = exc.code, exc.read(), exc.headers.get_content_type()
        if kind == "application/json":
            return status, json.loads(payload)
        return status, payload

    def raw(self, method: str, path: str, data: bytes | None = None, *,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        """(status, body bytes, content type) of one request, nothing parsed."""
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=self.auth if headers is None else headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get_content_type()

    def private_paths(self) -> list[str]:
        """Folders of this server that no answer may reveal."""
        return [str(p) for p in (self.output_dir, self.input_dir, self.cache_dir,
                                 self.log.parent, REPO)]

    def wait_compiled(self, timeout: float = 240) -> None:
        """Wait until the server's background compiles (of shapes that ran on the torch
        tier) are done."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, stats = self.request("GET", "/system_stats")
            if status == 200 and not stats["system"]["comfyc"]["tiers"]["compiling"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"background compiles not done in {timeout} s; server log:\n"
                             + self.log.read_text()[-3000:])

    def wait_history(self, prompt_id: str, timeout: float = 120) -> dict[str, Any]:
        """The history entry of a prompt, once it finished."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, body = self.request("GET", f"/history/{prompt_id}")
            if status == 200 and body:
                return body[prompt_id]
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s; server log:\n"
                             + self.log.read_text()[-3000:])


def strict_json(raw: bytes) -> Any:
    """Parse an answer as standard JSON (NaN or Infinity fail the test)."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"the server wrote {name}, which is not JSON")

    return json.loads(raw, parse_constant=refuse)


def start_server(tmp: Path, cache_dir: Path, *extra: str, ready_timeout: float = 90,
                 port: int | None = None) -> Server:
    """Start `comfyc serve` and wait until it answers."""
    port = port or free_port()
    out, inp = tmp / "output", tmp / "input"
    out.mkdir(parents=True, exist_ok=True)
    inp.mkdir(parents=True, exist_ok=True)
    log = tmp / "server.log"
    if log.exists():  # A restart on the same folder: keep the earlier log.
        log.rename(tmp / f"server.{time.time_ns()}.log")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    process = subprocess.Popen(
        [sys.executable, "-m", "comfyc.cli.main", "serve", "--port", str(port),
         "--output", str(out), "--input-dir", str(inp), "--cache-dir", str(cache_dir),
         *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp,  # noqa: SIM115
        start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", out, inp, cache_dir,
                    process, log)
    end = time.monotonic() + ready_timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"comfyc serve exited with {process.returncode}:\n"
                                 + log.read_text()[-3000:])
        try:
            if server.request("GET", "/system_stats")[0] in (200, 401):
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    stop_server(server)
    raise AssertionError("comfyc serve did not answer in time:\n" + log.read_text()[-3000:])


def stop_server(server: Server, timeout: float = 30) -> None:
    """Stop the server (SIGTERM: it shuts its workers, and Ray, down), then sweep its
    process group so nothing it started outlives the test."""
    import signal

    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


@pytest.fixture(scope="session")
def serve_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled-artifact cache shared by every server in the session.

    Under pytest-xdist it is shared by the workers too (their base temp folders have one
    parent): the engine's file lock makes the first server compile and the others wait and
    reuse its artifact, so the suite compiles the workflow once.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "comfyc-serve-cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, serve_cache: Path) -> Iterator[Server]:
    """One `comfyc serve` for the session (1 MiB request limit, to test 413 cheaply)."""
    srv = start_server(tmp_path_factory.mktemp("serve"), serve_cache, "--max-request-mb", "1")
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def artifact(server: Server, serve_cache: Path) -> Path:
    """The compiled artifact of the tiny-model txt2img shape in the session cache (its first
    prompt runs on the torch tier; this waits for the background compile)."""
    status, body = server.request("POST", "/prompt", {"prompt": workflow(seed=7)})
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"])
    server.wait_compiled()
    path = serve_cache / f"{entry['comfyc']['graph']}.comfyc"
    assert (path / "manifest.json").is_file(), sorted(p.name for p in serve_cache.iterdir())
    return path

