"""``comfyc serve``: ComfyUI's HTTP + websocket API on comfyc's runtime.

The pieces, each in its own module:

* :mod:`.hub` — the queue (ComfyUI's ``front`` priorities), leases, bounded history and the
  websocket event log; plain thread-safe Python, so the same object serves one process or
  sits inside a Ray actor shared by replicas.
* :mod:`.store` — the durable record of accepted prompts (SQLite in the cache folder): a
  server killed mid-queue runs, after its restart, what it had accepted.
* :mod:`.engine` — a prompt → a program: validation in ComfyUI's vocabulary and as strict as
  the run, compile on first sight of a graph shape (seeds, sampler settings, prompt texts and
  filename prefixes become runtime params), the bounded on-disk artifact cache, remembered
  compile failures, the memory budget, and precompiled artifacts.
* :mod:`.redact` — strict JSON in, standard JSON out, no server paths in messages, no tokens
  in logs.
* :mod:`.worker` — runs claimed prompts and sends ComfyUI's messages in ComfyUI's order.
* :mod:`.app` — the starlette ASGI app with ComfyUI's routes (also under ``/api``).
* :mod:`.cli` — ``comfyc serve`` (uvicorn), and :mod:`.ray_serve` for ``--ray``.

The server layer is optional: it imports the compiler lazily (to compile what it is sent)
and starlette/uvicorn (the ``serve`` extra); the runtime core imports none of it.
"""

from __future__ import annotations

__all__: list[str] = []
