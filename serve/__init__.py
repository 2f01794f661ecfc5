"""``comfyc serve``: ComfyUI's HTTP + websocket API and web page on comfyc's runtime.

The pieces, each in its own module:

* :mod:`.hub` — the queue (ComfyUI's ``front`` priorities), leases, bounded history, the
  websocket event log and the metrics; plain thread-safe Python, so the same object serves
  one process or sits inside a Ray actor shared by replicas (restarted by Ray if it dies).
* :mod:`.store` — the durable record of accepted prompts and leases (SQLite in the cache
  folder): a server killed mid-queue runs, after its restart, what it had accepted; a hub
  actor restarted by Ray adopts the leases of the workers that outlived it.
* :mod:`.engine` — a prompt → a program: validation in ComfyUI's vocabulary and as strict as
  the run, tiered execution (a new graph shape runs at once on PyTorch while its artifact
  compiles in a background process, :mod:`.compile_job`; later prompts run the artifact),
  the bounded on-disk artifact cache, remembered failures, the memory budget, and
  precompiled artifacts.
* :mod:`.redact` — strict JSON in, standard JSON out, no server paths in messages, no tokens
  in logs.
* :mod:`.worker` — runs claimed prompts and sends ComfyUI's messages in ComfyUI's order (each
  saying which tier ran it), one log line per prompt.
* :mod:`.app` — the starlette ASGI app with ComfyUI's routes (also under ``/api``);
  :mod:`.web` — ComfyUI's web page (the ``comfyui-frontend-package`` files) and the routes it
  calls; :mod:`.jobs` — the page's jobs view of queue and history; :mod:`.metrics` —
  ``/metrics`` in Prometheus' text format.
* :mod:`.cli` — ``comfyc serve`` (uvicorn), and :mod:`.ray_serve` for ``--ray``.

The server layer is optional: it imports the compiler lazily (to compile what it is sent)
and starlette/uvicorn (the ``serve`` extra) and the frontend package (the ``web`` extra); the
runtime core imports none of it.
"""

from __future__ import annotations

__all__: list[str] = []
