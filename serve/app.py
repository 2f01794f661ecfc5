"""The ASGI app: ComfyUI's HTTP and websocket routes on a hub and an engine.

Routes (each also under ``/api``): ``POST/GET /prompt``, ``GET/POST /queue``, ``GET/POST
/history``, ``GET /history/{prompt_id}``, ``GET /view``, ``POST /upload/image``, ``POST
/upload/mask``, ``GET /object_info[/{class}]``, ``GET /system_stats``, ``GET /embeddings``,
``GET /models[/{kind}]``, ``POST /interrupt``, ``POST /free``, ``GET /jobs``, ``GET
/jobs/{id}``, ``POST /jobs/{id}/cancel``, ``POST /jobs/cancel``, ``GET /ws?clientId=…``, and
comfyc's own ``GET /comfyc/prompts/{prompt_id}`` (``pending``, ``running``, ``success``,
``error``, ``lost`` or ``unknown``). ``GET /metrics`` (Prometheus text) is at the root only.
With ComfyUI's web page (:mod:`.web`), ``/`` is the page, its files are served under their own
paths, and the routes the page calls besides these are added (users, settings, user data,
model library, templates …). Shapes follow ComfyUI's ``server.py``; see the package docstring
for what differs.

``/object_info`` comes from comfyc's catalogue; classes the node registry marks check-only
(comfyc cannot run them) are ``deprecated`` there, named "(not available in comfyc)" and
described with the reason (:func:`mark_unavailable`), so the page hides them from search and
badges them on the canvas.

Safety: an optional bearer token (``Authorization: Bearer T``; ``?token=T`` only on the
websocket, whose browser clients cannot set headers — a token in any other URL is refused, and
log lines never show one; the web page logs in once at ``/comfyc/login`` and sends the token
as an HttpOnly, SameSite=Strict cookie); a request body limit (413); ``/view``,
``/upload/image`` and the user's files confined to their folders (:mod:`.paths`), hidden
files never served; malformed JSON, non-finite numbers, unknown nodes, bad values, duplicate
prompt ids, unusable upload names and prompts over the memory budget answer 4xx in ComfyUI's
``{"error", "node_errors"}`` shape (429 when the queue is full). Every body is standard JSON
(no NaN) and names no server folder (:mod:`.redact`). An unexpected failure in a handler
answers a JSON 500 naming it; the server and its workers keep running.

The same app runs under uvicorn (``comfyc serve``: the hub is in-process) and inside Ray Serve
replicas (``--ray``: the hub is one shared actor); :class:`HubAccess` hides the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import io
import logging
import os
import platform
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import redact
from .engine import Engine, PromptRejected
from .paths import UnsafePathError, safe_join
from .web import TESTED_FRONTEND, PageError, WebPage, server_features, status_response

__all__ = ["DEFAULT_MAX_BODY", "UNAVAILABLE_SUFFIX", "HubAccess", "ServerConfig", "create_app",
           "mark_unavailable"]

_log = logging.getLogger(__name__)

#: Request bodies larger than this are refused with 413 (uploads included).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: Longest file name part (bytes, as most filesystems allow) and upload subfolder (characters).
_MAX_NAME_BYTES = 200
_MAX_SUBFOLDER = 512
#: Longest client id of a websocket connection (ComfyUI's are UUIDs).
_MAX_CLIENT_ID = 256
#: Largest queue ``number`` a client may give (a float holds every integer up to 2**53).
_MAX_NUMBER = 2**53
#: ``extra_data`` keys ComfyUI never stores (the page sends its comfy.org credentials there).
_SENSITIVE_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")
#: The cookie that carries the token for the web page (set by ``POST /comfyc/login``).
_TOKEN_COOKIE = "comfyc_token"
_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>comfyc serve</title></head><body style="font-family:sans-serif;margin:4em">
<h1>comfyc serve</h1><p>This server needs its token (<code>comfyc serve --token</code>).</p>
<form method="post" action="/comfyc/login"><input type="password" name="token" autofocus>
<button type="submit">Open</button></form><p>{message}</p></body></html>"""
#: The suffix of the page's name for node classes comfyc cannot run.
UNAVAILABLE_SUFFIX = " (not available in comfyc)"


class _Json(JSONResponse):
    """A JSON response in standard JSON (non-finite numbers written as null)."""

    def render(self, content: Any) -> bytes:
        return redact.dumps(content).encode("utf-8")


@dataclass
class ServerConfig:
    """What the app needs besides the hub.

    Attributes:
        engine: Validates and compiles prompts.
        output_dir: Where outputs are written (``/view?type=output``; ``temp/`` inside it).
        input_dir: Where uploads go and LoadImage reads (``/view?type=input``).
        token: Required bearer token (None: no authentication).
        max_body: Request size limit in bytes.
        on_queued: Called with a prompt's model key after it is queued (starts its worker).
        info: Extra facts for ``/system_stats`` (``comfyc.replica`` …).
        page: ComfyUI's web page and the routes it calls (None: the API only).
    """

    engine: Engine
    output_dir: Path
    input_dir: Path
    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    on_queued: Callable[[str], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    page: WebPage | None = None


class HubAccess:
    """Async access to a hub: a :class:`~.hub.Hub` in this process, or a Ray actor handle."""

    def __init__(self, hub: Any, *, remote: bool = False) -> None:
        self.hub = hub
        self.remote = remote

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a hub method."""
        if self.remote:
            return await getattr(self.hub, name).remote(*args, **kwargs)
        return getattr(self.hub, name)(*args, **kwargs)

    async def read(self, client_id: str, cursor: int, previews: bool,
                   wake: asyncio.Event) -> tuple[list[Any], int]:
        """The next messages for a connection (waits for some)."""
        if self.remote:
            return await self.hub.read.remote(client_id, cursor, previews, 10.0)
        while True:
            wake.clear()
            messages, cursor = self.hub.read(client_id, cursor, previews)
            if messages:
                return messages, cursor
            try:
                await asyncio.wait_for(wake.wait(), 10.0)
            except TimeoutError:
                return [], cursor


def _noise_choice_problem(extra: dict[str, Any]) -> str | None:
    """What is wrong with a prompt's own noise mode (``extra_data.comfyc.noise_mode``)."""
    from comfyc.runtime.noise import NOISE_MODES

    own = extra.get("comfyc")
    if own is None:
        return None
    if not isinstance(own, dict):
        return "extra_data.comfyc must be a JSON object such as {\"noise_mode\": \"cuda\"}"
    mode = own.get("noise_mode")
    if mode is not None and mode not in NOISE_MODES:
        return (f"extra_data.comfyc.noise_mode is {mode!r}; expected one of "
                f"{', '.join(NOISE_MODES)}")
    return None


def _bad(kind: str, message: str, details: str = "", status: int = 400) -> JSONResponse:
    return _Json({"error": {"type": kind, "message": message, "details": details,
                            "extra_info": {}}, "node_errors": {}}, status_code=status)


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, *, empty_ok: bool = True) -> Any:
    """A JSON body (``{}`` when empty and allowed); raises ValueError with a message."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise ValueError("the request body is empty; send a JSON object")
    try:
        return redact.loads(raw)
    except redact.NonFiniteNumber as exc:
        raise ValueError(f"the request body holds a number JSON does not allow: {exc}"
                         ) from None
    except ValueError as exc:
        raise ValueError(f"the request body is not valid JSON: {exc}") from None


async def _json(request: Request, limit: int, *, empty_ok: bool = True) -> Any:
    """The JSON body (``{}`` when empty and allowed); raises ValueError with a message."""
    return _parse(await _body(request, limit), empty_ok=empty_ok)


def create_app(hub: HubAccess, config: ServerConfig) -> Starlette:
    """The starlette app serving ComfyUI's API.

    Args:
        hub: The queue, history and events.
        config: Folders, engine, limits and the token.
    """
    engine = config.engine
    redactor = engine.redactor

    def guard(handler: Callable[[Request], Awaitable[Response]]
              ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            if config.token is not None and not _authorised(request, config.token):
                in_url = "token" in request.query_params
                return _Json({"error": {
                    "type": "unauthorized", "message": "missing or wrong bearer token",
                    "details": ("a token in the URL is accepted only by /ws; send the header "
                                "'Authorization: Bearer TOKEN' instead" if in_url else
                                "send the header 'Authorization: Bearer TOKEN' (the token "
                                "given to comfyc serve --token)"),
                    "extra_info": {}}, "node_errors": {}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            try:
                response = await handler(request)
            except PageError as exc:
                return status_response(exc)
            except _TooLarge:
                return _bad("request_too_large",
                            f"the request body is larger than the server's limit of "
                            f"{config.max_body} bytes", "send a smaller request, or start "
                            "the server with a larger --max-request-mb", 413)
            except Exception as exc:  # noqa: BLE001 - report it; never take the server down
                _log.exception("%s %s failed", request.method, request.url.path)
                return _bad("server_error", redactor.text(f"{type(exc).__name__}: {exc}"),
                            "this is a comfyc bug; please report it", 500)
            return response
        return wrapped

    def rejected(body: dict[str, Any], status: int = 400) -> JSONResponse:
        """A 4xx in ComfyUI's shape whose messages name no server folder."""
        return _Json(redactor.value(body), status_code=status)

    # ----------------------------------------------------------------- prompt
    async def post_prompt(request: Request) -> Response:
        raw = await _body(request, config.max_body)
        try:
            body = _parse(raw, empty_ok=False)
        except ValueError as exc:
            return _bad("invalid_json", str(exc), "send {\"prompt\": {...}, \"client_id\": ...}")
        if not isinstance(body, dict):
            return _bad("invalid_json", f"the request body is a JSON {type(body).__name__}; "
                        "expected an object", "send {\"prompt\": {...}, \"client_id\": ...}")
        if "prompt" not in body:
            # NOTE: ComfyUI's exact answer for a body without a prompt.
            return _Json({"error": "no prompt", "node_errors": []}, status_code=400)
        prompt = body["prompt"]
        extra = body.get("extra_data") or {}
        if not isinstance(extra, dict):
            return _bad("invalid_prompt", "extra_data must be a JSON object")
        client_id = body.get("client_id")
        if client_id is not None and (not isinstance(client_id, str)
                                      or len(client_id) > _MAX_CLIENT_ID):
            return _bad("invalid_prompt", f"client_id must be a string of at most "
                        f"{_MAX_CLIENT_ID} characters")
        if client_id:
            extra = {**extra, "client_id": client_id}
        if (problem := _noise_choice_problem(extra)) is not None:
            return _bad("invalid_prompt", problem)
        # NOTE: as ComfyUI: credentials are never kept (the queue and history are readable by
        # every client), and the time of acceptance is (the page's queue panel sorts by it).
        extra = {k: v for k, v in extra.items() if k not in _SENSITIVE_EXTRA}
        extra["create_time"] = int(time.time() * 1000)
        number = body.get("number")
        if number is not None and (isinstance(number, bool)
                                   or not isinstance(number, (int, float))
                                   or not -_MAX_NUMBER <= number <= _MAX_NUMBER):
            return _bad("invalid_prompt", f"number must be a number between -{_MAX_NUMBER} "
                        f"and {_MAX_NUMBER} (the queue position)")
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and (not isinstance(prompt_id, str) or not prompt_id
                                      or len(prompt_id) > 200):
            return _bad("invalid_prompt", "prompt_id must be a non-empty string")
        targets = body.get("partial_execution_targets")
        if targets is not None:
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                return _bad("invalid_prompt", "partial_execution_targets must be a list of "
                            "output node ids")
            prompt = engine.only_outputs(prompt, targets)
        try:
            valid = await asyncio.to_thread(engine.validate, prompt)
        except PromptRejected as exc:
            return rejected(exc.body)
        # NOTE: the id (unless the client chose one) and a request id are made here, so a
        # submit that Ray retries after the hub's process died cannot queue the prompt twice.
        queued = await hub.call(
            "submit", valid.prompt, extra, valid.outputs, client_id, valid.key,
            front=bool(body.get("front")), number=number,
            prompt_id=prompt_id or str(uuid.uuid4()), size=len(raw),
            request_id=uuid.uuid4().hex)
        if "error" in queued:
            status = 429 if queued["error"] == "queue_full" else 400
            return _bad(queued["error"], queued["message"], "", status)
        if config.on_queued is not None:
            config.on_queued(valid.key)
        return _Json({"prompt_id": queued["prompt_id"], "number": queued["number"],
                      "node_errors": {}})

    async def get_prompt(request: Request) -> Response:
        return _Json(await hub.call("status"))

    async def prompt_state(request: Request) -> Response:
        """comfyc's own: whether a prompt is pending, running, finished, lost or unknown."""
        prompt_id = request.path_params["prompt_id"]
        return _Json({"prompt_id": prompt_id, "state": await hub.call("state", prompt_id)})

    # ------------------------------------------------------------------ queue
    async def get_queue(request: Request) -> Response:
        return _Json(await hub.call("queue"))

    async def clear_or_delete(request: Request, clear: tuple[Any, ...],
                              delete_method: str) -> Response:
        """``{"clear": true}`` and/or ``{"delete": [ids]}``, as ComfyUI's queue and history
        take them; ``clear`` is the hub call that empties everything."""
        try:
            body = await _json(request, config.max_body)
        except ValueError as exc:
            return _bad("invalid_json", str(exc))
        if not isinstance(body, dict):
            return _bad("invalid_json", "expected {\"clear\": true} or {\"delete\": [ids]}")
        if body.get("clear"):
            await hub.call(*clear)
        delete = body.get("delete")
        if delete is not None:
            if not isinstance(delete, list) or not all(isinstance(d, str) for d in delete):
                return _bad("invalid_json", "delete must be a list of prompt ids")
            await hub.call(delete_method, delete)
        return Response(status_code=200)

    async def post_queue(request: Request) -> Response:
        return await clear_or_delete(request, ("clear_pending",), "delete_pending")

    # ---------------------------------------------------------------- history
    async def get_history(request: Request) -> Response:
        try:
            max_items = request.query_params.get("max_items")
            max_items = int(max_items) if max_items is not None else None
            offset = int(request.query_params.get("offset", -1))
        except ValueError:
            return _bad("invalid_query", "max_items and offset must be integers")
        return _Json(await hub.call("history", max_items, offset))

    async def get_history_one(request: Request) -> Response:
        return _Json(await hub.call("history_of", request.path_params["prompt_id"]))

    async def post_history(request: Request) -> Response:
        return await clear_or_delete(request, ("delete_history", None), "delete_history")

    # ------------------------------------------------------------ files
    def folder(kind: str) -> Path | None:
        return {"output": config.output_dir, "input": config.input_dir,
                "temp": config.output_dir / "temp"}.get(kind)

    async def view(request: Request) -> Response:
        q = request.query_params
        filename = q.get("filename")
        if not filename:
            return _bad("invalid_query", "/view needs ?filename=NAME (and optionally "
                        "subfolder=, type=output|input|temp)")
        root = folder(q.get("type", "output") or "output")
        if root is None:
            return _bad("invalid_query", f"type {q.get('type')!r} is not one of output, input, "
                        "temp")
        subfolder = q.get("subfolder", "") or ""
        try:
            path = safe_join(root, subfolder, filename)
        except UnsafePathError as exc:
            return _bad("invalid_path", str(exc), "give a file name and subfolder inside the "
                        "folder, as the history lists them", 403)
        # NOTE: hidden files (temporaries being written, locks, dot-files a user keeps) are
        # never outputs; they are answered as missing.
        hidden = any(part.startswith(".")
                     for part in path.relative_to(root.resolve()).parts)
        try:
            found = not hidden and path.is_file()
        except OSError:  # A name too long for the filesystem.
            found = False
        if not found:
            return _bad("not_found", f"no file {filename[:200]!r} in the "
                        f"{q.get('type', 'output')} folder", "", 404)
        return FileResponse(path)

    async def upload_image(request: Request) -> Response:
        return await upload(request, mask=False)

    async def upload_mask(request: Request) -> Response:
        """ComfyUI's ``/upload/mask``: the page's mask editor sends a picture whose alpha is
        the mask, and ``original_ref`` (the picture it was drawn on); the original gets that
        alpha and is stored under the upload's name."""
        return await upload(request, mask=True)

    async def upload(request: Request, *, mask: bool) -> Response:
        raw = await _body(request, config.max_body)
        try:
            fields, files = _parse_multipart(request.headers.get("content-type", ""), raw)
        except ValueError as exc:
            return _bad("invalid_form", f"the upload is not a valid multipart form: {exc}",
                        "send multipart/form-data with an 'image' file field")
        if "image" not in files:
            return _bad("invalid_form", "the upload has no 'image' file field",
                        "send multipart/form-data with an 'image' file field")
        name, data = files["image"]
        kind = fields.get("type") or "input"
        root = folder(kind)
        if root is None:
            return _bad("invalid_form", f"type {kind[:40]!r} is not one of input, temp, "
                        "output")
        subfolder = fields.get("subfolder") or ""
        overwrite = (fields.get("overwrite") or "").lower() in ("true", "1")
        problem = _check_upload_name(name, subfolder)
        if problem:
            return _bad("invalid_path", problem, "upload with a plain file name (at most "
                        f"{_MAX_NAME_BYTES} bytes) and a short subfolder inside the folder")
        try:
            target = safe_join(root, subfolder, name)
        except UnsafePathError as exc:
            return _bad("invalid_path", str(exc), "upload with a plain file name and a "
                        "subfolder inside the folder", 403)
        base = root.resolve()
        if target == base or any(p.startswith(".") for p in target.relative_to(base).parts):
            return _bad("invalid_path", f"{name[:80]!r} is not a file name (hidden names and "
                        "folders are not allowed)", "", 400)
        picture = _check_image(data)
        if isinstance(picture, str):
            return _bad("invalid_image", f"the upload is not an image: {picture}",
                        "upload a PNG, JPEG or WebP picture")
        too_large = engine.check_upload(*picture)
        if too_large:
            return _bad("image_too_large", f"the upload is too large: {too_large}",
                        "upload a smaller picture")
        if mask:
            composed = await asyncio.to_thread(_apply_mask, fields.get("original_ref", ""),
                                               data, folder)
            if isinstance(composed, Response):
                return composed
            data = composed
        try:
            stored = await asyncio.to_thread(_store_upload, target, data, overwrite)
        except OSError as exc:
            return _bad("invalid_path", _upload_problem(exc, subfolder), "", 400)
        rel_sub = stored.parent.relative_to(base).as_posix()
        return _Json({"name": stored.name, "subfolder": "" if rel_sub == "." else rel_sub,
                      "type": kind})

    # ---------------------------------------------------------------- info
    async def object_info(request: Request) -> Response:
        from comfyc.compiler.catalog import default_catalog

        data = await asyncio.to_thread(default_catalog().to_object_info, engine.list_files)
        data = mark_unavailable(data)
        name = request.path_params.get("node_class")
        if name is not None:
            data = {name: data[name]} if name in data else {}
        return _Json(data)

    async def system_stats(request: Request) -> Response:
        from comfyc import __version__

        total, free = _memory()
        cache = await asyncio.to_thread(engine.cache_stats)
        # NOTE: argv as ComfyUI reports it, but with the server's folders labelled; and
        # `--disable-api-nodes`, which is what comfyc is (no comfy.org API nodes): the page
        # then makes no calls to api.comfy.org (release notes …) from a server's page.
        argv = [*redactor.value(sys.argv), "--disable-api-nodes"]
        versions = {}
        if config.page is not None and config.page.web_root is not None:
            versions = {"required_frontend_version": TESTED_FRONTEND}
        return _Json({
            "system": {"os": os.name, "ram_total": total, "ram_free": free,
                       "comfyui_version": f"comfyc {__version__}", **versions,
                       "python_version": sys.version, "pytorch_version": "",
                       "embedded_python": False, "argv": argv,
                       "comfyc": {"backend": engine.backend, "pid": os.getpid(),
                                  "cache": cache, "tiers": engine.tier_stats(),
                                  "memory_budget": engine.memory_budget,
                                  "recovered": await hub.call("recovered"),
                                  "hub_pid": await hub.call("pid"),
                                  **config.info}},
            "devices": [{"name": platform.processor() or "cpu", "type": "cpu", "index": None,
                         "vram_total": total, "vram_free": free, "torch_vram_total": 0,
                         "torch_vram_free": 0}],
        })

    async def embeddings(request: Request) -> Response:
        names = [Path(n).stem for n in engine.list_files("embeddings")]
        return _Json(names)

    async def models(request: Request) -> Response:
        from comfyc.runtime.model_paths import MODEL_KINDS

        kind = request.path_params.get("kind")
        if kind is None:
            return _Json(list(MODEL_KINDS))
        if kind not in MODEL_KINDS:
            return _bad("not_found", f"no model folder {kind!r}", f"one of {MODEL_KINDS}", 404)
        return _Json(engine.list_files(kind))

    # ------------------------------------------------------------------- jobs
    async def get_jobs(request: Request) -> Response:
        """ComfyUI's ``/api/jobs``: queue and history as jobs, filtered and paged."""
        from .jobs import JOB_STATUSES

        q = request.query_params
        statuses = [s.strip().lower() for s in q.get("status", "").split(",") if s.strip()]
        unknown = [s for s in statuses if s not in JOB_STATUSES]
        if unknown:
            return _Json({"error": f"Invalid status value(s): {', '.join(unknown)[:200]}. "
                                   f"Valid values: {', '.join(JOB_STATUSES)}"}, status_code=400)
        sort_by = q.get("sort_by", "created_at").lower()
        sort_order = q.get("sort_order", "desc").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return _Json({"error": "sort_by must be 'created_at' or 'execution_duration'"},
                         status_code=400)
        if sort_order not in ("asc", "desc"):
            return _Json({"error": "sort_order must be 'asc' or 'desc'"}, status_code=400)
        try:
            limit = int(q["limit"]) if "limit" in q else None
            offset = max(0, int(q.get("offset", 0)))
        except ValueError:
            return _Json({"error": "limit and offset must be integers"}, status_code=400)
        if limit is not None and limit <= 0:
            return _Json({"error": "limit must be a positive integer"}, status_code=400)
        return _Json(await hub.call("jobs", statuses or None, q.get("workflow_id"), sort_by,
                                    sort_order, limit, offset))

    async def get_job(request: Request) -> Response:
        job = await hub.call("job", request.path_params["job_id"])
        if job is None:
            return _Json({"error": "Job not found"}, status_code=404)
        return _Json(job)

    async def cancel_job(request: Request) -> Response:
        return _Json({"cancelled": await hub.call("cancel", [request.path_params["job_id"]])})

    async def cancel_jobs(request: Request) -> Response:
        try:
            body = await _json(request, config.max_body)
        except ValueError as exc:
            return _Json({"error": str(exc)}, status_code=400)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _Json({"error": "job_ids must be a list of job ids"}, status_code=400)
        return _Json({"cancelled": await hub.call("cancel", ids)})

    async def interrupt(request: Request) -> Response:
        try:
            body = await _json(request, config.max_body)
        except ValueError as exc:
            return _bad("invalid_json", str(exc))
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        await hub.call("interrupt", pid if isinstance(pid, str) else None)
        return Response(status_code=200)

    async def free(request: Request) -> Response:
        try:
            body = await _json(request, config.max_body)
        except ValueError as exc:
            return _bad("invalid_json", str(exc))
        if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
            await hub.call("set_flags", unload_models=True)
            engine.free()
        return Response(status_code=200)

    async def root(request: Request) -> Response:
        return _Json({"server": "comfyc", "api": "ComfyUI-compatible",
                             "see": ["/prompt", "/queue", "/history", "/object_info", "/ws"]})

    # ------------------------------------------------------------------ login
    def login_first(handler: Callable[[Request], Awaitable[Response]]
                    ) -> Callable[[Request], Awaitable[Response]]:
        """The page for a browser with the token (its cookie); others go to the form."""
        async def wrapped(request: Request) -> Response:
            if config.token is not None and not _authorised(request, config.token):
                return RedirectResponse("/comfyc/login", status_code=303)
            return await handler(request)
        return wrapped

    async def login_form(request: Request, failed: bool = False) -> Response:
        """A browser cannot send a bearer header: it posts the token here once and gets it
        back as a cookie (HttpOnly, SameSite=Strict) that every later request carries."""
        return HTMLResponse(_LOGIN_PAGE.replace(
            "{message}", "Wrong token." if failed else ""), status_code=401 if failed else 200)

    async def login(request: Request) -> Response:
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        raw = await _body(request, 64 * 1024)
        given = urllib.parse.parse_qs(raw.decode("utf-8", "replace")).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            return await login_form(request, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(_TOKEN_COOKIE, given, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    # ---------------------------------------------------------------- metrics
    async def metrics(request: Request) -> Response:
        """Prometheus text: queue depth, prompts by outcome and tier, seconds per stage."""
        return Response(await hub.call("metrics_text"),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # -------------------------------------------------------------- websocket
    async def ws(websocket: WebSocket) -> None:
        if config.token is not None and not _authorised(websocket, config.token,
                                                        query_ok=True):
            await websocket.close(code=4401)
            return
        q = websocket.query_params
        client_id = q.get("clientId") or uuid.uuid4().hex
        if len(client_id) > _MAX_CLIENT_ID:
            # NOTE: closed before the handshake completes: the client gets HTTP 403.
            await websocket.close(code=1008)
            return
        await websocket.accept()
        previews = q.get("preview", q.get("previews", "")).lower() in ("1", "true", "png")
        if previews:
            await hub.call("want_previews", client_id, True)
        # NOTE: the cursor is taken before the status, so that a prompt finishing in
        # between is still reported (its `executing null` comes after the status).
        cursor = await hub.call("cursor")
        status = await hub.call("status")
        wake = asyncio.Event()
        waker = None
        if not hub.remote:
            loop = asyncio.get_running_loop()

            def waker() -> None:
                loop.call_soon_threadsafe(wake.set)

            hub.hub.add_waker(waker)

        async def drain() -> None:
            # Client messages are read (this also notices the disconnect); the page's first
            # one offers its feature flags, and ComfyUI answers with the server's.
            first = True
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if first and _is_feature_flags(message.get("text")):
                    await websocket.send_text(redact.dumps({
                        "type": "feature_flags", "data": server_features(config.max_body)}))
                first = False

        reader = asyncio.create_task(drain())
        try:
            await websocket.send_json({"type": "status",
                                       "data": {"status": status, "sid": client_id}})
            while not reader.done():
                reading = asyncio.create_task(hub.read(client_id, cursor, previews, wake))
                done, _ = await asyncio.wait({reading, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel()
                    break
                messages, cursor = reading.result()
                for message in messages:
                    if isinstance(message, (bytes, bytearray)):
                        await websocket.send_bytes(bytes(message))
                    else:
                        await websocket.send_text(redact.dumps(message))
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            reader.cancel()
            if waker is not None:
                hub.hub.remove_waker(waker)
            if previews:
                try:
                    await hub.call("want_previews", client_id, False)
                except Exception:  # noqa: BLE001 - the hub is going away with us
                    _log.debug("want_previews(off) failed", exc_info=True)

    handlers: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/prompt", post_prompt, ["POST"]), ("/prompt", get_prompt, ["GET"]),
        ("/queue", get_queue, ["GET"]), ("/queue", post_queue, ["POST"]),
        ("/history", get_history, ["GET"]), ("/history", post_history, ["POST"]),
        ("/history/{prompt_id}", get_history_one, ["GET"]),
        ("/view", view, ["GET"]), ("/upload/image", upload_image, ["POST"]),
        ("/object_info", object_info, ["GET"]),
        ("/object_info/{node_class}", object_info, ["GET"]),
        ("/system_stats", system_stats, ["GET"]), ("/embeddings", embeddings, ["GET"]),
        ("/models", models, ["GET"]), ("/models/{kind}", models, ["GET"]),
        ("/interrupt", interrupt, ["POST"]), ("/free", free, ["POST"]),
        ("/upload/mask", upload_mask, ["POST"]),
        ("/jobs", get_jobs, ["GET"]), ("/jobs/cancel", cancel_jobs, ["POST"]),
        ("/jobs/{job_id}", get_job, ["GET"]), ("/jobs/{job_id}/cancel", cancel_job, ["POST"]),
        ("/comfyc/prompts/{prompt_id}", prompt_state, ["GET"]),
    ]
    page = config.page
    if page is not None:
        handlers += page.handlers()
    routes: list[Any] = [
        Route("/", login_first(page.index) if page is not None and page.web_root is not None
              else guard(root), methods=["GET"]),
        Route("/comfyc/login", login_form, methods=["GET"]),
        Route("/comfyc/login", login, methods=["POST"]),
    ]
    routes.append(Route("/metrics", guard(metrics), methods=["GET"]))
    for prefix in ("", "/api"):
        for path, handler, methods in handlers:
            routes.append(Route(prefix + path, guard(handler), methods=methods))
        routes.append(WebSocketRoute(prefix + "/ws", ws))
    if page is not None:
        routes += [Route(path, guard(handler), methods=methods)
                   for path, handler, methods in page.internal_handlers()]
        if page.web_root is not None:
            # NOTE: last: the page's own files (public package code) under every other path.
            routes.append(Route("/{path:path}", page.static, methods=["GET", "HEAD"]))
    return Starlette(routes=routes)


def mark_unavailable(object_info: dict[str, Any]) -> dict[str, Any]:
    """``/object_info`` with the classes comfyc cannot run marked the page's own way.

    Such a class is ``deprecated`` (the page hides it from search and the node library, and
    badges it ``[DEPR]`` on the canvas), its name says "(not available in comfyc)", and its
    description gives the reason; a prompt using it is refused at ``/prompt`` with that
    reason on the node.
    """
    from comfyc.runtime.nodes import registry

    nodes = registry()
    out = {}
    for name, entry in object_info.items():
        node = nodes.get(name)
        reason = node.check_only if node is not None else None
        if reason:
            entry = {**entry, "deprecated": True,
                     "display_name": f"{entry.get('display_name') or name}{UNAVAILABLE_SUFFIX}",
                     "description": f"Not available in comfyc: {reason}"}
        out[name] = entry
    return out


def _is_feature_flags(text: Any) -> bool:
    """Whether a websocket text frame is the page's ``feature_flags`` offer."""
    if not isinstance(text, str) or len(text) > 65536:
        return False
    try:
        message = redact.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "feature_flags"


def _authorised(conn: Any, token: str, *, query_ok: bool = False) -> bool:
    """Whether the request carries the token: in the Authorization header, in the web page's
    login cookie, or (``query_ok``, the websocket only) as ``?token=``."""
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given: str | None = header[7:]
    elif _TOKEN_COOKIE in conn.cookies:
        # NOTE: the web page's login (SameSite=Strict: no other site's page sends it).
        given = conn.cookies[_TOKEN_COOKIE]
    else:
        given = conn.query_params.get("token") if query_ok else None
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _check_upload_name(name: str, subfolder: str) -> str | None:
    """Why an upload's file name or subfolder cannot be stored, or None."""
    if not name or not name.strip():
        return "the upload has no file name"
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    if any(len(p.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES for p in parts):
        return f"the file name is longer than {_MAX_NAME_BYTES} bytes"
    if len(subfolder) > _MAX_SUBFOLDER:
        return f"the subfolder is longer than {_MAX_SUBFOLDER} characters"
    folders = [p for p in subfolder.replace("\\", "/").split("/") if p]
    if any(len(p.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES for p in folders):
        return f"a subfolder name is longer than {_MAX_NAME_BYTES} bytes"
    return None


def _store_upload(target: Path, data: bytes, overwrite: bool) -> Path:
    """Write an upload to ``target`` (or ``name (N).ext`` when taken and not overwriting).

    The bytes go to a temporary file first; without ``overwrite`` the final name is published
    by a hard link, which fails instead of replacing a file another upload just stored.

    Raises:
        OSError: The folder cannot be made (a file is in the way) or written.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, target)
            return target
        stem, suffix = target.stem, target.suffix
        candidate, index = target, 1
        while not _publish(tmp, candidate):
            candidate = target.with_name(f"{stem} ({index}){suffix}")
            index += 1
        return candidate
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: str, path: Path) -> bool:
    """Give a finished temporary file the name ``path`` unless it exists (False then).

    A hard link fails on an existing name; where links are unsupported the name is claimed
    with O_EXCL and the file renamed over the claim.
    """
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                             errno.EMLINK, errno.ENOSYS):
            raise
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    os.replace(tmp, path)
    return True


def _upload_problem(exc: OSError, subfolder: str) -> str:
    """An OSError of storing an upload, in words that name no server path."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return (f"the subfolder {subfolder[:80]!r} cannot be made: a file of that name is in "
                "the way")
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name or subfolder is too long for the server's filesystem"
    if exc.errno == errno.ENOSPC:
        return "the server's disk is full"
    return f"the upload cannot be stored: {os.strerror(exc.errno or 0)}"


def _parse_multipart(content_type: str, raw: bytes
                     ) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Fields and files (name -> (filename, bytes)) of a multipart/form-data body.

    Raises:
        ValueError: Not multipart/form-data, or a malformed body.
    """
    from email.parser import BytesParser
    from email.policy import HTTP

    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in \
            content_type:
        raise ValueError(f"Content-Type is {content_type or 'missing'!r}, expected "
                         f"multipart/form-data with a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart() or message.defects:
        raise ValueError("the body does not parse as multipart parts")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (str(filename), payload)
        else:
            fields[str(name)] = payload.decode("utf-8", "replace")
    return fields, files


def _apply_mask(original_ref: str, data: bytes, folder: Callable[[str], Path | None]
                ) -> bytes | Response:
    """The original picture of a mask upload with the mask's alpha, as PNG bytes (its text
    chunks kept); or the error answer.

    ``original_ref`` is ``{"filename", "subfolder", "type"}`` (JSON); a file name may carry
    the folder as ``"name [output]"``. Names are confined like ``/view``'s.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    try:
        ref = redact.loads(original_ref or "{}")
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        return _bad("invalid_form", "original_ref must be JSON naming the picture the mask "
                    "was drawn on: {\"filename\", \"subfolder\", \"type\"}")
    name, kind = ref["filename"], ref.get("type") or "output"
    for label in ("output", "input", "temp"):
        if name.endswith(f" [{label}]"):
            name, kind = name[: -len(label) - 3], label
    root = folder(str(kind))
    if root is None:
        return _bad("invalid_form", "original_ref's type is not one of input, temp, output")
    try:
        path = safe_join(root, str(ref.get("subfolder") or ""), name)
    except UnsafePathError as exc:
        return _bad("invalid_path", str(exc), "", 403)
    if not path.is_file() or any(p.startswith(".") for p in path.relative_to(
            root.resolve()).parts):
        return _bad("not_found", f"no picture {name[:200]!r} in the {kind} folder", "", 404)
    try:
        with Image.open(path) as original, Image.open(io.BytesIO(data)) as drawn:
            info = PngInfo()
            for key, value in (getattr(original, "text", None) or {}).items():
                info.add_text(key, value)
            picture = original.convert("RGBA")
            alpha = drawn.convert("RGBA").getchannel("A")
            if alpha.size != picture.size:
                alpha = alpha.resize(picture.size)
            picture.putalpha(alpha)
            out = io.BytesIO()
            picture.save(out, format="PNG", compress_level=4, pnginfo=info)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return _bad("invalid_image", f"the mask or its picture cannot be read: {exc}"[:300])
    return out.getvalue()


def _check_image(data: bytes) -> tuple[int, int, int] | str:
    """``(width, height, frames)`` when ``data`` decodes as a picture; else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            size = (*picture.size, int(getattr(picture, "n_frames", 1) or 1))
            picture.verify()
    except Image.DecompressionBombError as exc:
        return str(exc)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            struct_error) as exc:
        return str(exc)[:200] or type(exc).__name__
    return size


def _memory() -> tuple[int, int]:
    """Total and available RAM in bytes (from /proc/meminfo; zeros elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        free = int(fields.get("MemAvailable", fields["MemFree"]).split()[0]) * 1024
        return total, free
    except (OSError, KeyError, ValueError):
        return 0, 0
