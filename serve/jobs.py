"""ComfyUI's jobs view (``GET /api/jobs``, ``/api/jobs/{id}``): queue and history as one list.

The page's queue panel reads prompts as *jobs*: ``{id, status, priority, create_time,
execution_start_time, execution_end_time, execution_error, outputs_count, preview_output,
workflow_id}`` with ``status`` one of ``pending``, ``in_progress``, ``completed``, ``failed``
and ``cancelled`` (an interrupted prompt). Built here from the hub's queue items and history
entries; fields without a value are left out, as ComfyUI leaves them out.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JOB_STATUSES", "history_job", "list_jobs", "queue_job"]

#: Every job status, in ComfyUI's words.
JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
#: Media kinds the page can preview in its queue panel.
_PREVIEWABLE = ("images", "video", "audio", "3d", "text")


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _workflow_facts(extra_data: Any) -> tuple[Any, Any]:
    """``(create_time, workflow id)`` of a queue item's ``extra_data``."""
    extra = extra_data if isinstance(extra_data, dict) else {}
    info = extra.get("extra_pnginfo")
    workflow = info.get("workflow") if isinstance(info, dict) else None
    return extra.get("create_time"), (workflow.get("id") if isinstance(workflow, dict)
                                      else None)


def queue_job(item: list[Any], status: str) -> dict[str, Any]:
    """A pending or running queue item ``[number, id, prompt, extra_data, outputs]``."""
    created, workflow_id = _workflow_facts(item[3])
    return _present({"id": item[1], "status": status, "priority": item[0],
                     "create_time": created, "outputs_count": 0, "workflow_id": workflow_id})


def _outputs_summary(outputs: Any) -> tuple[int, dict[str, Any] | None]:
    """How many output files a prompt made, and the one the panel previews (an output
    picture first)."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in (outputs or {}).items():
        if not isinstance(node_outputs, dict):
            continue
        for kind, items in node_outputs.items():
            if kind == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if kind not in _PREVIEWABLE or preview is not None:
                    continue
                shown = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", kind)}
                if item.get("type") == "output":
                    preview = shown
                elif fallback is None:
                    fallback = shown
    return count, preview or fallback


def history_job(prompt_id: str, entry: dict[str, Any], *, details: bool = False
                ) -> dict[str, Any]:
    """A finished prompt's history entry as a job (``details``: with its outputs, status
    messages and workflow, as ``/api/jobs/{id}`` answers)."""
    item = entry.get("prompt") or [0, prompt_id, {}, {}, []]
    created, workflow_id = _workflow_facts(item[3] if len(item) > 3 else {})
    status_info = entry.get("status") or {}
    started = ended = error = None
    interrupted = False
    for message in status_info.get("messages") or []:
        if not isinstance(message, (list, tuple)) or len(message) < 2:
            continue
        event, data = message[0], message[1]
        if not isinstance(data, dict):
            continue
        if event == "execution_start":
            started = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            ended = data.get("timestamp")
            error = data if event == "execution_error" else error
            interrupted = interrupted or event == "execution_interrupted"
    if status_info.get("status_str") == "error":
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"
    count, preview = _outputs_summary(entry.get("outputs"))
    job = _present({"id": prompt_id, "status": status, "priority": item[0],
                    "create_time": created, "execution_start_time": started,
                    "execution_end_time": ended, "execution_error": error,
                    "outputs_count": count, "preview_output": preview,
                    "workflow_id": workflow_id})
    if details:
        job["outputs"] = entry.get("outputs") or {}
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": item[2] if len(item) > 2 else {},
                           "extra_data": item[3] if len(item) > 3 else {}}
    return job


def list_jobs(running: list[list[Any]], pending: list[list[Any]],
              history: dict[str, dict[str, Any]], *, statuses: list[str] | None = None,
              workflow_id: str | None = None, sort_by: str = "created_at",
              sort_order: str = "desc", limit: int | None = None, offset: int = 0
              ) -> tuple[list[dict[str, Any]], int]:
    """Jobs of the queue and the history, filtered, sorted and paged.

    Returns:
        ``(jobs of the page, total count before paging)``.
    """
    wanted = set(statuses or JOB_STATUSES)
    jobs: list[dict[str, Any]] = []
    if "in_progress" in wanted:
        jobs += [queue_job(item, "in_progress") for item in running]
    if "pending" in wanted:
        jobs += [queue_job(item, "pending") for item in pending]
    if wanted & {"completed", "failed", "cancelled"}:
        jobs += [job for pid, entry in history.items()
                 if (job := history_job(pid, entry))["status"] in wanted]
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    if sort_by == "execution_duration":
        def key(job: dict[str, Any]) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return float(end - start) if start and end else 0.0
    else:
        def key(job: dict[str, Any]) -> float:
            return float(job.get("create_time") or 0)
    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    jobs = jobs[max(0, offset):]
    if limit is not None:
        jobs = jobs[:limit]
    return jobs, total
