"""``GET /metrics``: the server's counters in Prometheus' text format (version 0.0.4).

Kept by the hub (one per server, or one shared by every Ray replica), fed by the workers:

* ``comfyc_queue_pending`` / ``comfyc_queue_running`` — gauges, the queue now;
* ``comfyc_prompts_total{outcome, tier}`` — finished prompts (``success``, ``error``,
  ``interrupted``; ``torch`` or ``artifact``);
* ``comfyc_prompt_stage_seconds{stage, tier}`` — a histogram per stage of a prompt: ``queue``
  (accepted → claimed), ``prepare`` (lowering, or loading an artifact), ``run``, the model
  stages inside the run (``unet``, ``text_encoder``, ``vae_decoder`` …) and ``total``;
* ``comfyc_compiles_total{outcome}`` and ``comfyc_compile_seconds`` — background compiles.

Plain Python, no client library: the format is a few lines of text, and the hub must stay a
plain object that a Ray actor can hold.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

__all__ = ["BUCKETS", "Metrics"]

#: Histogram bucket bounds in seconds (a tiny-model step to a full-size compile).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _Histogram:
    """Cumulative bucket counts, sum and count of observations."""

    __slots__ = ("counts", "count", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        for index in range(bisect.bisect_left(BUCKETS, value), len(BUCKETS)):
            self.counts[index] += 1
        self.count += 1
        self.total += value


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Prompt and compile counters (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompts: dict[tuple[str, str], int] = {}
        self._stages: dict[tuple[str, str], _Histogram] = {}
        self._compiles: dict[str, int] = {}
        self._compile_seconds = _Histogram()

    def record(self, kind: str, facts: dict[str, Any]) -> None:
        """Count a finished prompt (``kind`` ``prompt``: outcome, tier, seconds by stage) or
        a finished background compile (``compile``: ok, seconds); other kinds are ignored."""
        with self._lock:
            if kind == "prompt":
                tier = str(facts.get("tier", ""))
                key = (str(facts.get("outcome", "")), tier)
                self._prompts[key] = self._prompts.get(key, 0) + 1
                for stage, seconds in (facts.get("seconds") or {}).items():
                    if isinstance(seconds, (int, float)) and seconds >= 0:
                        self._stages.setdefault((str(stage), tier), _Histogram()).observe(
                            float(seconds))
            elif kind == "compile":
                outcome = "success" if facts.get("ok") else "error"
                self._compiles[outcome] = self._compiles.get(outcome, 0) + 1
                seconds = facts.get("seconds")
                if isinstance(seconds, (int, float)) and seconds >= 0:
                    self._compile_seconds.observe(float(seconds))

    def render(self, pending: int, running: int) -> str:
        """The Prometheus text exposition of every metric."""
        lines = [
            "# HELP comfyc_queue_pending Prompts waiting in the queue.",
            "# TYPE comfyc_queue_pending gauge",
            f"comfyc_queue_pending {pending}",
            "# HELP comfyc_queue_running Prompts running now.",
            "# TYPE comfyc_queue_running gauge",
            f"comfyc_queue_running {running}",
            "# HELP comfyc_prompts_total Finished prompts by outcome and tier.",
            "# TYPE comfyc_prompts_total counter",
        ]
        with self._lock:
            for (outcome, tier), count in sorted(self._prompts.items()):
                lines.append(f"comfyc_prompts_total{_labels(outcome=outcome, tier=tier)} "
                             f"{count}")
            lines += ["# HELP comfyc_prompt_stage_seconds Seconds per stage of a prompt.",
                      "# TYPE comfyc_prompt_stage_seconds histogram"]
            for (stage, tier), histogram in sorted(self._stages.items()):
                lines += _histogram_lines("comfyc_prompt_stage_seconds", histogram,
                                          stage=stage, tier=tier)
            lines += ["# HELP comfyc_compiles_total Background compiles by outcome.",
                      "# TYPE comfyc_compiles_total counter"]
            for outcome, count in sorted(self._compiles.items()):
                lines.append(f"comfyc_compiles_total{_labels(outcome=outcome)} {count}")
            lines += ["# HELP comfyc_compile_seconds Seconds per background compile.",
                      "# TYPE comfyc_compile_seconds histogram"]
            lines += _histogram_lines("comfyc_compile_seconds", self._compile_seconds)
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, histogram: _Histogram, **labels: str) -> list[str]:
    out = [f"{name}_bucket{_labels(**labels, le=_bound(b))} {c}"
           for b, c in zip(BUCKETS, histogram.counts)]
    out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {histogram.count}")
    out.append(f"{name}_sum{_labels(**labels)} {histogram.total:.6f}")
    out.append(f"{name}_count{_labels(**labels)} {histogram.count}")
    return out


def _bound(value: float) -> str:
    return f"{value:g}"
