"""``comfyc serve``: ComfyUI's HTTP + websocket API on comfyc's runtime.

The pieces, each in its own module:

* :mod:`.hub` — the queue (ComfyUI's ``front`` priorities), leases, bounded history and the
  websocket event log; plain thread-safe Python, so the same object serves one process or
  sits inside a Ray actor shared by replicas.
* :mod:`.engine` — a prompt → a program: validation in ComfyUI's vocabulary, compile on
  first sight of a graph shape (seeds, sampler settings and prompt texts become runtime
  params), the on-disk artifact cache and precompiled artifacts.
* :mod:`.worker` — runs claimed prompts and sends ComfyUI's messages in ComfyUI's order.
* :mod:`.app` — the starlette ASGI app with ComfyUI's routes (also under ``/api``).
* :mod:`.cli` — ``comfyc serve`` (uvicorn), and :mod:`.ray_serve` for ``--ray``.

The server layer is optional: it imports the compiler lazily (to compile what it is sent)
and starlette/uvicorn (the ``serve`` extra); the runtime core imports none of it.
"""

from __future__ import annotations

__all__: list[str] = []
