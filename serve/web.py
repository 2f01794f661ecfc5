"""ComfyUI's web page on comfyc: the frontend package's files and the routes the page calls.

The page is the ``comfyui-frontend-package`` wheel (static files; the ``web`` extra), served
as ComfyUI serves it: ``index.html`` at ``/`` (never cached), every other file under its own
path. The routes it calls besides the API of :mod:`.app` (found in the package's JavaScript:
``api.fetchApi(...)`` and ``/internal`` calls; shapes from ComfyUI's ``server.py`` and
``app/*.py``):

* ``/features`` and the websocket's ``feature_flags`` answer: what this server supports;
* ``/extensions`` (the JavaScript files under the package's ``extensions/``);
* ``/users``, ``/settings[/{id}]``, ``/userdata…``, ``/v2/userdata``: one user (ComfyUI without
  ``--multi-user``), whose workflows and settings live in ``USER_DIR/default`` — names are
  confined to that folder as ``/view`` confines its names (no absolute paths, no ``..``, no
  links out);
* ``/experiment/models[/{folder}]`` (the model library), ``/view_metadata/{folder}``;
* ``/internal/files/{type}`` and ``/internal/logs…``.

Routes for features comfyc does not have answer the way ComfyUI answers when that feature is
off, so the page never shows an error dialog for them: workflow templates (an empty index),
custom-node translations and templates, node replacements and global subgraphs (empty),
model previews (404), terminal logs (empty).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mimetypes
import os
import shutil
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from comfyc.runtime.files import atomic_write

from . import redact
from .paths import UnsafePathError, safe_join

__all__ = ["DEFAULT_USER", "FRONTEND_PACKAGE", "SETTINGS_FILE", "TESTED_FRONTEND", "PageError",
           "WebPage",
           "find_frontend", "frontend_version", "server_features", "status_response"]

#: The frontend's Python package (its ``static/`` folder is the page).
FRONTEND_PACKAGE = "comfyui_frontend_package"
#: The frontend version the page's routes were read from and tested with: ``/system_stats``
#: reports it as required, so an older installed frontend shows the page's own warning.
TESTED_FRONTEND = "1.47.10"
#: The one user of a server (ComfyUI's name for it without ``--multi-user``).
DEFAULT_USER = "default"
#: The page's settings, inside the user's folder (ComfyUI's file name).
SETTINGS_FILE = "comfy.settings.json"
#: Largest settings file read (a larger one is treated as empty, as a damaged one is).
_MAX_SETTINGS_BYTES = 16 * 1024 * 1024
#: Model folders the model library lists, and the file kinds in each (ComfyUI's extensions).
_MODEL_EXTENSIONS = [".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"]
#: Content types never served inline from the user's folder (stored XSS).
_DANGEROUS_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml",
                    "application/javascript", "text/javascript", "application/xml", "text/xml")


def find_frontend(explicit: str | None = None) -> Path | None:
    """The folder of the page's files: ``explicit`` (``--front-end-root``), else the
    installed frontend package's ``static/``; None when there is neither."""
    if explicit:
        root = Path(explicit).expanduser().resolve()
        return root if (root / "index.html").is_file() else None
    try:
        import importlib.util

        spec = importlib.util.find_spec(FRONTEND_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "static"
        if (root / "index.html").is_file():
            return root.resolve()
    return None


def frontend_version() -> str | None:
    """The installed frontend package's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(FRONTEND_PACKAGE.replace("_", "-"))
    except PackageNotFoundError:
        return None


def server_features(max_upload: int) -> dict[str, Any]:
    """What this server supports, in ComfyUI's ``feature_flags`` vocabulary.

    NOTE: ``assets`` off (the page then lists models through ``/experiment/models``) and
    ``node_replacements`` on with an empty list, as ComfyUI answers when nothing is replaced.
    """
    return {"supports_preview_metadata": False, "supports_model_type_tags": False,
            "max_upload_size": max_upload, "node_replacements": True, "assets": False,
            "comfyc": True}


class PageError(Exception):
    """A plain-text error answer of a page route (ComfyUI answers these errors as text).

    Attributes:
        status: The HTTP status.
        text: The answer's body.
    """

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class WebPage:
    """The page's files and routes (see the module docstring).

    Args:
        web_root: The frontend's ``static/`` folder (None: no page; ``/`` answers JSON).
        user_dir: The users' folder; the one user's files are in ``user_dir/default``.
        list_files: File names of a model folder (``checkpoints`` …) or ``input``.
        model_folders: Model folder names, in the order ``/models`` lists them.
        model_file: The file of a model by folder and name, or None (for its metadata).
        output_dir: The output folder (``temp/`` inside it), for ``/internal/files``.
        input_dir: The input folder, for ``/internal/files``.
        max_upload: The request size limit in bytes (a feature flag the page reads).
    """

    def __init__(self, web_root: Path | None, user_dir: Path,
                 list_files: Callable[[str], list[str]], model_folders: tuple[str, ...],
                 model_file: Callable[[str, str], Path | None], output_dir: Path,
                 input_dir: Path, max_upload: int) -> None:
        self.web_root = web_root
        self.user_dir = user_dir
        self.list_files = list_files
        self.model_folders = model_folders
        self.model_file = model_file
        self.output_dir, self.input_dir = output_dir, input_dir
        self.max_upload = max_upload
        self._lock = threading.Lock()

    @property
    def user_root(self) -> Path:
        """The one user's folder (made on first use)."""
        root = self.user_dir / DEFAULT_USER
        if not root.is_dir():
            self._seed(root)
        return root

    @staticmethod
    def _seed(root: Path) -> None:
        """Make a new user's folder with what the page looks for at start: the folders of
        saved workflows and subgraphs, and an empty list of node templates.

        NOTE: the page reads each at start and takes "missing" (404) as empty; the browser
        logs every 404 as a console error, so they exist, empty, from the start.
        """
        for folder in ("workflows", "subgraphs"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        templates = root / "comfy.templates.json"
        if not templates.exists():
            atomic_write(templates, "[]")

    # ----------------------------------------------------------------- routes
    def handlers(self) -> list[tuple[str, Callable[[Request], Any], list[str]]]:
        """``(path, handler, methods)`` of the page's API routes (served also under /api)."""
        return [
            ("/features", self.features, ["GET"]),
            ("/extensions", self.extensions, ["GET"]),
            ("/users", self.get_users, ["GET"]), ("/users", self.post_users, ["POST"]),
            ("/settings", self.get_settings, ["GET"]),
            ("/settings", self.post_settings, ["POST"]),
            ("/settings/{setting_id:path}", self.get_setting, ["GET"]),
            ("/settings/{setting_id:path}", self.post_setting, ["POST"]),
            ("/userdata", self.list_userdata, ["GET"]),
            ("/v2/userdata", self.list_userdata_v2, ["GET"]),
            ("/userdata/{rest:path}", self.userdata, ["GET", "POST", "DELETE"]),
            ("/experiment/models", self.model_folders_info, ["GET"]),
            ("/experiment/models/{folder}", self.models_in_folder, ["GET"]),
            ("/experiment/models/preview/{rest:path}", self.not_found, ["GET"]),
            ("/view_metadata/{folder}", self.view_metadata, ["GET"]),
            ("/workflow_templates", self.empty_object, ["GET"]),
            ("/i18n", self.empty_object, ["GET"]),
            ("/node_replacements", self.empty_object, ["GET"]),
            ("/global_subgraphs", self.empty_object, ["GET"]),
            ("/global_subgraphs/{rest:path}", self.not_found, ["GET"]),
        ]

    def internal_handlers(self) -> list[tuple[str, Callable[[Request], Any], list[str]]]:
        """``(path, handler, methods)`` of ComfyUI's ``/internal`` routes the page calls."""
        return [
            ("/internal/logs", self.logs, ["GET"]),
            ("/internal/logs/raw", self.raw_logs, ["GET"]),
            ("/internal/logs/subscribe", self.ok, ["PATCH"]),
            ("/internal/folder_paths", self.empty_object, ["GET"]),
            ("/internal/files/{kind}", self.internal_files, ["GET"]),
            ("/templates/{name:path}", self.templates, ["GET"]),
        ]

    # ------------------------------------------------------------------ files
    async def index(self, request: Request) -> Response:
        """``/``: the page (never cached: a new frontend version must be picked up)."""
        assert self.web_root is not None
        return FileResponse(self.web_root / "index.html", headers={
            "Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"})

    async def static(self, request: Request) -> Response:
        """Any other path: a file of the page, confined to its folder."""
        assert self.web_root is not None
        name = urllib.parse.unquote(request.url.path.lstrip("/"))
        if name == "user.css":
            # NOTE: index.html links user.css (a stylesheet a ComfyUI user may drop into the
            # page's folder); comfyc has none, and an empty one is the same page without
            # the browser's 404 line in the console.
            return Response(b"", media_type="text/css")
        try:
            path = safe_join(self.web_root, name)
        except UnsafePathError:
            return Response(status_code=404)
        if not path.is_file():
            return Response(status_code=404)
        # NOTE: scripts and styles are not cached (ComfyUI's cache_control middleware): after
        # an upgrade the page must not mix old and new chunks.
        headers = {"Cache-Control": "no-store"} if path.suffix in (".js", ".css") else {}
        return FileResponse(path, headers=headers)

    async def extensions(self, request: Request) -> Response:
        """``/extensions``: the page's extension scripts (the page imports those outside
        ``extensions/core``; comfyc has no custom-node web folders)."""
        if self.web_root is None:
            return JSONResponse([])
        found = sorted("/" + p.relative_to(self.web_root).as_posix()
                       for p in (self.web_root / "extensions").rglob("*.js"))
        return JSONResponse(found)

    async def features(self, request: Request) -> Response:
        """``/features``: the server's feature flags."""
        return JSONResponse(server_features(self.max_upload))

    # ------------------------------------------------------------------ users
    async def get_users(self, request: Request) -> Response:
        """``GET /users``: one user, settings stored on the server (ComfyUI without
        ``--multi-user``)."""
        migrated = (self.user_dir / DEFAULT_USER).is_dir()
        return JSONResponse({"storage": "server", "migrated": migrated})

    async def post_users(self, request: Request) -> Response:
        """``POST /users``: refused; the server has one user (ComfyUI's answer shape)."""
        return JSONResponse({"error": "comfyc serve has one user; it does not create users"},
                            status_code=400)

    def _read_settings(self) -> dict[str, Any]:
        path = self.user_root / SETTINGS_FILE
        try:
            if path.stat().st_size > _MAX_SETTINGS_BYTES:
                return {}
            data = redact.loads(path.read_bytes())
        except (OSError, ValueError):
            # NOTE: ComfyUI treats a damaged settings file as empty (and says so in its log).
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _settings_lock(self) -> Iterator[None]:
        """Serialise read-modify-write of the settings (threads here, and replicas sharing
        the user folder)."""
        with self._lock, open(self.user_dir / ".settings.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    async def get_settings(self, request: Request) -> Response:
        """``GET /settings``: every setting."""
        return JSONResponse(self._read_settings())

    async def get_setting(self, request: Request) -> Response:
        """``GET /settings/{id}``: one setting's value (null when unset)."""
        return JSONResponse(self._read_settings().get(request.path_params["setting_id"]))

    async def post_settings(self, request: Request) -> Response:
        """``POST /settings``: merge an object of settings."""
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise PageError(400, "expected a JSON object of settings")
        with self._settings_lock():
            self._write_settings({**self._read_settings(), **body})
        return Response(status_code=200)

    async def post_setting(self, request: Request) -> Response:
        """``POST /settings/{id}``: set one setting to the JSON body."""
        value = await self._json_body(request)
        with self._settings_lock():
            settings = self._read_settings()
            settings[request.path_params["setting_id"]] = value
            self._write_settings(settings)
        return Response(status_code=200)

    def _write_settings(self, settings: dict[str, Any]) -> None:
        atomic_write(self.user_root / SETTINGS_FILE, json.dumps(settings, indent=4))

    async def _json_body(self, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > self.max_upload:
            raise PageError(413, "the request body is too large")
        try:
            return redact.loads(raw)
        except ValueError as exc:
            raise PageError(400, f"the body is not valid JSON: {exc}") from None

    # --------------------------------------------------------------- userdata
    def _user_path(self, name: str) -> Path:
        """A file or folder of the user's, by a client-given relative name.

        Raises:
            PageError: 403 for a name that leaves the user's folder.
        """
        if not name or not name.strip():
            raise PageError(400, "no file name given")
        try:
            return safe_join(self.user_root, name)
        except UnsafePathError as exc:
            raise PageError(403, str(exc)) from None

    async def list_userdata(self, request: Request) -> Response:
        """``GET /userdata?dir=D[&recurse=true][&full_info=true][&split=true]``: the files
        in a folder of the user's (ComfyUI's three answer shapes)."""
        q = request.query_params
        folder = self._user_path(q.get("dir", ""))
        if not folder.is_dir():
            raise PageError(404, "Directory not found")
        recurse = q.get("recurse", "").lower() == "true"
        full_info = q.get("full_info", "").lower() == "true"
        split = q.get("split", "").lower() == "true"
        files = sorted(p for p in (folder.rglob("*") if recurse else folder.glob("*"))
                       if p.is_file() and not _is_temporary(p))
        out: list[Any] = []
        for path in files:
            rel = path.relative_to(folder).as_posix()
            if full_info:
                out.append(_file_info(path, rel))
            elif split:
                out.append([rel, *rel.split("/")])
            else:
                out.append(rel)
        return JSONResponse(out)

    async def list_userdata_v2(self, request: Request) -> Response:
        """``GET /v2/userdata?path=P``: files and folders below a folder of the user's."""
        wanted = request.query_params.get("path", "")
        root = self.user_root
        target = self._user_path(wanted) if wanted else root
        if not target.exists():
            return JSONResponse([]) if target == root else Response(
                "Requested path not found", status_code=404)
        if not target.is_dir():
            raise PageError(400, "Requested path is not a directory")
        out = []
        for path in sorted(target.rglob("*")):
            if _is_temporary(path):
                continue
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                out.append({"name": path.name, "path": rel, "type": "directory"})
            elif path.is_file():
                stat = path.stat()
                out.append({"name": path.name, "path": rel, "type": "file",
                            "size": stat.st_size, "modified": stat.st_mtime})
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return JSONResponse(out)

    async def userdata(self, request: Request) -> Response:
        """``GET/POST/DELETE /userdata/{file}`` and ``POST /userdata/{file}/move/{dest}``.

        NOTE: names come percent-encoded (``workflows%2Fa.json``); they are split on the raw
        path's slashes first, so a name holding ``/move/`` is still one name.
        """
        parts = [urllib.parse.unquote(p) for p in
                 request.scope.get("raw_path", b"").decode("latin-1").split("?")[0].split("/")]
        start = parts.index("userdata") + 1
        rest = parts[start:]
        if request.method == "POST" and len(rest) == 3 and rest[1] == "move":
            return await self._move(request, rest[0], rest[2])
        if len(rest) != 1:
            raise PageError(400, "a user file name is one path part (encode '/' as %2F)")
        path = self._user_path(rest[0])
        if request.method == "GET":
            if rest[0] == "user.css" and not path.exists():
                # NOTE: index.html links the user's stylesheet; none is an empty one (not a
                # 404 line in the browser's console on every start).
                return Response(b"", media_type="text/css")
            if not path.is_file():
                raise PageError(404, "File not found")
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind in _DANGEROUS_TYPES:
                kind = "application/octet-stream"
            # NOTE: user files are arbitrary content; never rendered inline in the page's
            # origin (ComfyUI answers the same three headers).
            return FileResponse(path, headers={"Content-Type": kind,
                                               "X-Content-Type-Options": "nosniff",
                                               "Content-Disposition": "attachment"})
        if request.method == "DELETE":
            if not path.is_file():
                raise PageError(404, "File not found")
            path.unlink()
            return Response(status_code=204)
        q = request.query_params
        overwrite = q.get("overwrite", "true") != "false"
        if not overwrite and path.exists():
            raise PageError(409, "File already exists")
        body = await request.body()
        if len(body) > self.max_upload:
            raise PageError(413, "the file is too large")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, body)
        except OSError:
            raise PageError(400, "Invalid filename. Please avoid special characters like "
                          ':\\/*?"<>|') from None
        return JSONResponse(self._answer(path, q.get("full_info", "false").lower() == "true"))

    async def _move(self, request: Request, source_name: str, dest_name: str) -> Response:
        source, dest = self._user_path(source_name), self._user_path(dest_name)
        if not source.is_file():
            raise PageError(404, "File not found")
        q = request.query_params
        if q.get("overwrite", "true") == "false" and dest.exists():
            raise PageError(409, "File already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, dest)
        return JSONResponse(self._answer(dest, q.get("full_info", "false").lower() == "true"))

    def _answer(self, path: Path, full_info: bool) -> Any:
        rel = path.relative_to(self.user_root.resolve()).as_posix()
        return _file_info(path, rel) if full_info else rel

    # ----------------------------------------------------------------- models
    async def model_folders_info(self, request: Request) -> Response:
        """``/experiment/models``: the model folders (their server paths are not shown)."""
        return JSONResponse([{"name": name, "folders": [f"<models>/{name}"],
                              "extensions": _MODEL_EXTENSIONS} for name in self.model_folders])

    async def models_in_folder(self, request: Request) -> Response:
        """``/experiment/models/{folder}``: the files of a model folder."""
        folder = request.path_params["folder"]
        if folder not in self.model_folders:
            return Response(status_code=404)
        out = []
        for name in self.list_files(folder):
            entry: dict[str, Any] = {"name": name, "pathIndex": 0}
            path = self.model_file(folder, name)
            with contextlib.suppress(OSError, AttributeError):
                stat = path.stat()  # type: ignore[union-attr]
                entry.update(modified=stat.st_mtime, created=stat.st_ctime, size=stat.st_size)
            out.append(entry)
        return JSONResponse(out)

    async def view_metadata(self, request: Request) -> Response:
        """``/view_metadata/{folder}?filename=F``: a safetensors file's ``__metadata__``
        (404 when it has none, as ComfyUI answers)."""
        name = request.query_params.get("filename", "")
        folder = request.path_params["folder"]
        if not name.endswith(".safetensors") or folder not in self.model_folders:
            return Response(status_code=404)
        path = self.model_file(folder, name)
        metadata = _safetensors_metadata(path) if path is not None else None
        if metadata is None:
            return Response(status_code=404)
        return JSONResponse(metadata)

    # --------------------------------------------------------------- internal
    async def internal_files(self, request: Request) -> Response:
        """``/internal/files/{output|input|temp}``: file names, newest first, as LoadImage
        takes them (``name [type]``)."""
        kind = request.path_params["kind"]
        folder = {"output": self.output_dir, "input": self.input_dir,
                  "temp": self.output_dir / "temp"}.get(kind)
        if folder is None:
            return JSONResponse({"error": "Invalid directory type"}, status_code=400)
        entries = []
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.is_file() and not entry.name.startswith("."):
                    entries.append((entry.stat().st_mtime, entry.name))
        entries.sort(reverse=True)
        return JSONResponse([f"{name} [{kind}]" for _, name in entries])

    async def templates(self, request: Request) -> Response:
        """``/templates/…``: ComfyUI's workflow templates come from a package comfyc does not
        ship; its index files answer as empty (the page shows no templates), the rest 404."""
        name = request.path_params["name"]
        if name.startswith("index") and name.endswith(".json"):
            return JSONResponse({} if name == "index_logo.json" else [])
        if name == "fuse_options.json":
            return JSONResponse(None)  # The page's search then uses its defaults.
        return Response(status_code=404)

    async def logs(self, request: Request) -> Response:
        """``/internal/logs``: the server's terminal is not shown to the page (empty)."""
        return JSONResponse("")

    async def raw_logs(self, request: Request) -> Response:
        """``/internal/logs/raw``: no entries."""
        return JSONResponse({"entries": [], "size": {"cols": 80, "rows": 24}})

    async def ok(self, request: Request) -> Response:
        """An empty 200 (subscribing to logs that never come)."""
        return Response(status_code=200)

    async def empty_object(self, request: Request) -> Response:
        """``{}``: a feature comfyc does not have, answered as ComfyUI answers with none
        installed."""
        return JSONResponse({})

    async def not_found(self, request: Request) -> Response:
        """404, as ComfyUI answers for a preview or subgraph it does not have."""
        return Response(status_code=404)


def status_response(exc: PageError) -> Response:
    """The plain-text answer of a :class:`PageError`."""
    return Response(exc.text, status_code=exc.status, media_type="text/plain")


def _is_temporary(path: Path) -> bool:
    """Whether a file is an atomic write in progress (``.NAME.xxxx.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _file_info(path: Path, rel: str) -> dict[str, Any]:
    stat = path.stat()
    return {"path": rel, "size": stat.st_size, "modified": int(stat.st_mtime * 1000),
            "created": int(stat.st_ctime * 1000)}


def _safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file's header (at most 1 MiB read), or None."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 1024 * 1024:
                return None
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None

