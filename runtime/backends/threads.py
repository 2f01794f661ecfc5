"""How many threads a stage computes with: never more than the cores other work leaves free.

Every backend asks :func:`choose_threads`. Measured on the project's 2-core box shared with
other work (issue #22): PyTorch's default threads took 11-17 s per tiny image where one
thread took 1.1 s, and onnxruntime's UNet call 19-28 ms where one thread took 7.8-9.7 ms.
Two causes, both handled here and in the backends:

* More threads than free cores: a thread that is descheduled holds up the others at every
  operator's barrier. :func:`free_cores` reads the 1-minute load average (the run queue of
  the whole machine) and leaves the cores it says are busy.
* Spinning waits: idle onnxruntime and OpenMP threads spin for a while before they sleep,
  burning the cores other threads (ours and other people's) need. onnxruntime sessions are
  made with ``session.intra_op.allow_spinning = 0``; PyTorch's OpenMP threads wait passively
  when ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads (:func:`passive_openmp`).

An explicit thread count (``--threads N``, ``intra_op_threads=N``) is honoured up to the
machine's cores: the person (or the autotuner's measurement) knows the workload.
"""

from __future__ import annotations

import os

__all__ = ["choose_threads", "cores", "free_cores", "passive_openmp"]


def cores() -> int:
    """The cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cores(load: float | None = None) -> int:
    """Cores not taken by other work: ``cores() - round(load)``, at least 1.

    Args:
        load: The run-queue length to assume (default: the 1-minute load average, which
            counts this process too while it computes, so a session made mid-run is
            conservative).
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores(), cores() - int(load + 0.5)))


def choose_threads(requested: int | None = None) -> int:
    """The intra-op threads to use.

    Args:
        requested: An explicit count (capped at the cores), or None/0 for the free cores.

    Returns:
        A thread count >= 1.
    """
    if requested:
        return max(1, min(int(requested), cores()))
    return free_cores()


def passive_openmp() -> None:
    """Make OpenMP threads (PyTorch's CPU kernels) sleep instead of spinning when idle.

    Takes effect only if called before torch is first imported (OpenMP reads it once);
    an explicit ``OMP_WAIT_POLICY`` in the environment is left alone.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
