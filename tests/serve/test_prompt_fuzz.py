"""2,000 mutated POST /prompt bodies against a real server: 4xx with valid JSON, never a 5xx.

The server is a real `comfyc serve` serving the session's compiled txt2img artifact with
``--no-compile``: every body goes through the same validation as on a compiling server
(JSON parsing, structure, ComfyUI's checks, run-time types, files, memory), and a prompt that
passes and differs from the artifact's workflow only in runtime inputs is queued — the test
then deletes it from the queue (or interrupts it), so the worker never runs long. Prompts of
another shape are refused (400) instead of compiled, which keeps the loop fast.

Mutations (seeded, so every run sends the same 2,000 bodies): structural (values of another
shape anywhere, keys renamed or dropped, lists turned into objects), input values (huge,
negative, non-finite text, links to nowhere, wrong types), the JSON text itself (cuts, stray
tokens, NaN/Infinity literals), the body's envelope (prompt_id, client_id, number, front,
extra_data) and the graph (nodes deleted, added, rewired into cycles).
"""

from __future__ import annotations

import copy
import http.client
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frontends.test_mutation_fuzz import mutate_json, mutate_text

from .conftest import Server, start_server, stop_server, strict_json, workflow

BODIES = 2000
_ODD = [
    -1, 0, 2**63, 2**64, 2**70, -(2**70), 1e308, -1e-308, 0.5, 3.5, True, False, None, "",
    "NaN", "inf", "-Infinity", "1e999", "12", "x" * 10_000, [], [None], ["5", 0], ["5", 99],
    ["nowhere", 0], [5, 0], [["5", 0]], {}, {"__value__": [1, 2]}, {"a": {"b": {}}},
    "../../etc/passwd", "C:\\Windows\\x.png", "name [output]", "\u2603", "a\0b",
]
_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "nan", "null", "[", "{", '"', ",", "\\u0000",
           "\\ud800", "00", "-", "1" * 400]
_CLASSES = ["KSampler", "VAEDecode", "SaveImage", "LoadImage", "EmptyLatentImage",
            "CLIPTextEncode", "CheckpointLoaderSimple", "ImageScale", "LatentUpscale",
            "NoSuchNode", "", "PreviewImage", "VAEEncode", "ConditioningCombine"]


@pytest.fixture(scope="module")
def fuzz_server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`comfyc serve --no-compile` on the session's txt2img artifact."""
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_server(tmp, tmp / "cache", "--no-compile", "--max-request-mb", "1",
                       str(artifact))
    try:
        yield srv
    finally:
        stop_server(srv)


def _value_mutation(body: dict[str, Any], rng: random.Random) -> None:
    prompt = body["prompt"]
    for _ in range(rng.randint(1, 3)):
        node = prompt[rng.choice(sorted(prompt))]
        inputs = node["inputs"]
        if inputs:
            inputs[rng.choice(sorted(inputs))] = copy.deepcopy(rng.choice(_ODD))


def _graph_mutation(body: dict[str, Any], rng: random.Random) -> None:
    prompt = body["prompt"]
    roll = rng.random()
    ids = sorted(prompt)
    if roll < 0.3:
        prompt.pop(rng.choice(ids))
    elif roll < 0.6:
        prompt[str(rng.randint(8, 12))] = {"class_type": rng.choice(_CLASSES),
                                           "inputs": {"image": "x.png", "samples": ["5", 0]}}
    elif roll < 0.8:  # A cycle: KSampler's latent from the decoder's consumer chain.
        prompt["5"]["inputs"]["latent_image"] = ["5", 0]
    else:
        node = prompt[rng.choice(ids)]
        links = [k for k, v in node["inputs"].items() if isinstance(v, list)]
        if links:
            node["inputs"][rng.choice(links)] = [rng.choice(ids), rng.randint(-1, 4)]


def _envelope_mutation(body: dict[str, Any], rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice([[], 5, "prompt", None, [body], {"client_id": "x"}])
    key = rng.choice(["prompt_id", "client_id", "number", "front", "extra_data", "prompt"])
    body[key] = copy.deepcopy(rng.choice(_ODD))
    return body


def fuzz_bodies(count: int, seed: int = 2019) -> Iterator[bytes]:
    """``count`` mutated POST /prompt bodies (bytes; some are not JSON at all)."""
    rng = random.Random(seed)
    for index in range(count):
        body: Any = {"prompt": workflow(seed=rng.randint(0, 2**32)),
                     "client_id": f"fuzz-{index}",
                     "extra_data": {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}}}
        roll = rng.random()
        if roll < 0.35:
            body = mutate_json(body, rng)
        elif roll < 0.55:
            _value_mutation(body, rng)
        elif roll < 0.65:
            _graph_mutation(body, rng)
        elif roll < 0.75:
            body = _envelope_mutation(body, rng)
        text = json.dumps(body)
        if roll >= 0.75:
            text = mutate_text(text, rng)
            if rng.random() < 0.5:
                cut = rng.randrange(len(text) + 1)
                text = text[:cut] + rng.choice(_TOKENS) + text[cut:]
        yield text.encode("utf-8", "surrogatepass")


class _Client:
    """One keep-alive HTTP connection (reopened when the server closes it)."""

    def __init__(self, server: Server) -> None:
        self.host, port = server.host.split(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def test_two_thousand_mutated_prompts(fuzz_server: Server) -> None:
    """Every answer is 200 or 4xx, standard JSON in ComfyUI's shape, naming no server path."""
    client = _Client(fuzz_server)
    private = fuzz_server.private_paths()
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    for index, raw in enumerate(fuzz_bodies(BODIES)):
        status, payload = client.request("POST", "/prompt", raw)
        statuses[status] += 1
        context = f"body #{index}: {raw[:300]!r} -> {status} {payload[:300]!r}"
        assert status == 200 or 400 <= status < 500, context
        body = strict_json(payload)
        text = payload.decode()
        assert not any(p in text for p in private) and "Traceback" not in text, context
        if status == 200:
            prompt_id = body["prompt_id"]
            # NOTE: never let the worker run what the fuzzer queued for long.
            client.request("POST", "/queue", json.dumps({"delete": [prompt_id]}).encode())
            client.request("POST", "/interrupt", json.dumps({"prompt_id": prompt_id}).encode())
            continue
        assert set(body) == {"error", "node_errors"}, context
        error = body["error"]
        kinds[error["type"] if isinstance(error, dict) else error] += 1
    print(dict(statuses), dict(kinds.most_common()))
    assert statuses[200] > 20 and sum(v for k, v in statuses.items() if k >= 400) > 1000
    assert {"invalid_json", "prompt_outputs_failed_validation", "invalid_prompt"} <= set(kinds)
    # Afterwards the server is healthy: its reads are valid JSON and it still runs prompts.
    for path in ("/history", "/queue", "/system_stats"):
        status, payload = client.request("GET", path)
        assert status == 200 and strict_json(payload) is not None
    status, payload = client.request("POST", "/prompt",
                                     json.dumps({"prompt": workflow(seed=5)}).encode())
    assert status == 200
    assert fuzz_server.wait_history(strict_json(payload)["prompt_id"])["status"][
        "status_str"] == "success"


def _other_requests(count: int, seed: int = 11) -> Iterator[tuple[str, str, bytes, str]]:
    """Mutated requests to the other routes: (method, path, body, content type)."""
    import urllib.parse

    rng = random.Random(seed)
    words = ["", "..", "../x", ".hidden", "a/b", "a\\b", "x" * 3000, "%00", "\u2603", "-1",
             "99999999999999999999", "output", "temp", "input", "NaN", "/etc/passwd"]
    for _ in range(count):
        roll = rng.random()
        if roll < 0.3:
            query = {k: rng.choice(words) for k in rng.sample(
                ["filename", "subfolder", "type", "preview", "channel"], rng.randint(0, 4))}
            yield "GET", "/view?" + urllib.parse.urlencode(query), b"", ""
        elif roll < 0.45:
            query = {k: rng.choice(words) for k in rng.sample(["max_items", "offset"],
                                                              rng.randint(0, 2))}
            yield "GET", "/history?" + urllib.parse.urlencode(query), b"", ""
        elif roll < 0.6:
            boundary = "b0undary"
            name = rng.choice(words) or "x.png"
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                     f"{rng.choice(words)}\r\n" for k in rng.sample(
                         ["subfolder", "type", "overwrite"], rng.randint(0, 3))]
            payload = rng.choice([b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256)
                                                                  for _ in range(64)),
                                  b"GIF89a", b"", b"not an image"])
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                         f'filename="{name}"\r\n\r\n')
            body = "".join(parts).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
            if rng.random() < 0.3:
                body = mutate_text(body.decode("latin-1"), rng).encode("latin-1")
            yield "POST", "/upload/image", body, f"multipart/form-data; boundary={boundary}"
        else:
            path = rng.choice(["/queue", "/history", "/interrupt", "/free"])
            body_value: Any = rng.choice([{"delete": rng.choice(_ODD)}, {"clear": rng.choice(
                _ODD)}, {"prompt_id": rng.choice(_ODD)}, {"unload_models": rng.choice(_ODD)},
                rng.choice(_ODD)])
            text = json.dumps(body_value)
            if rng.random() < 0.3:
                text = mutate_text(text, rng)
            yield "POST", path, text.encode("utf-8", "surrogatepass"), "application/json"


def test_other_routes_with_mutated_requests(fuzz_server: Server) -> None:
    """/view, /history, /upload/image, /queue, /interrupt, /free: no 5xx, JSON errors."""
    import urllib.error
    import urllib.request

    private = fuzz_server.private_paths()
    statuses: Counter[int] = Counter()
    for method, path, body, kind in _other_requests(400):
        request = urllib.request.Request(fuzz_server.url + path, data=body or None,
                                         method=method,
                                         headers={"Content-Type": kind} if kind else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, response.read()
                content = response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            status, payload, content = exc.code, exc.read(), exc.headers.get_content_type()
        statuses[status] += 1
        context = f"{method} {path[:200]} {body[:200]!r} -> {status} {payload[:300]!r}"
        assert status < 500, context
        if status >= 400:
            assert content == "application/json", context
            assert set(strict_json(payload)) == {"error", "node_errors"}, context
            assert not any(p in payload.decode() for p in private), context
    print(dict(statuses))
    assert len(statuses) > 2
