"""OpenAI's files and fine-tuning jobs: an upload, a job that progresses as it is polled.

``POST /v1/files`` (multipart, ``purpose`` fine-tune) keeps the file in memory;
``POST /v1/fine_tuning/jobs`` creates a job on one of them. Each ``GET`` of the job
moves it a step: queued, running (a metrics event per poll), then succeeded with
``fine_tuned_model`` once ``ft_polls`` polls (default 2) have seen it run, or failed
with an error when the ``ft_fail`` option is set. ``.../cancel`` cancels it and
``.../events`` lists its events newest first, as OpenAI does.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from fakeupstream.wire import BadRequest, error_response, json_response

DEFAULT_POLLS = 2
FINISHED = ("succeeded", "failed", "cancelled")

_FILES = web.AppKey("fake_files", dict)
_JOBS = web.AppKey("fake_ft_jobs", dict)
_SEQUENCE = web.AppKey("fake_ft_sequence", itertools.count)


def setup(app: web.Application) -> None:
    app[_FILES] = {}
    app[_JOBS] = {}
    app[_SEQUENCE] = itertools.count(1)


def _new_id(request: web.Request, prefix: str) -> str:
    return f"{prefix}-fake{next(request.app[_SEQUENCE]):06d}"


def _job_or_404(request: web.Request) -> dict[str, Any] | web.Response:
    job_id = request.match_info["job_id"]
    job = request.app[_JOBS].get(job_id)
    if job is None:
        return error_response(
            404, f"No fine-tuning job found with id {job_id!r}", code="fine_tune_not_found"
        )
    return job


def _event(request: web.Request, job: dict, message: str, **data: Any) -> None:
    job["_events"].append(
        {
            "object": "fine_tuning.job.event",
            "id": _new_id(request, "ftevent"),
            "created_at": int(time.time()),
            "level": "info" if not data.get("error") else "error",
            "message": message,
            "data": data,
            "type": "metrics" if "step" in data else "message",
        }
    )


def _public(job: dict) -> dict:
    return {key: value for key, value in job.items() if not key.startswith("_")}


async def file_upload(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("Upload the file as multipart/form-data", param="file")
    form = await request.post()
    upload = form.get("file")
    if form.get("purpose") != "fine-tune":
        raise BadRequest("'purpose' must be 'fine-tune'", param="purpose")
    if not isinstance(upload, web.FileField):
        raise BadRequest("'file' is a required file", param="file")
    content = upload.file.read()
    if not content.strip():
        raise BadRequest("The file is empty", param="file")
    file_id = _new_id(request, "file")
    entry = {
        "id": file_id,
        "object": "file",
        "bytes": len(content),
        "created_at": int(time.time()),
        "filename": upload.filename,
        "purpose": "fine-tune",
        "status": "processed",
    }
    request.app[_FILES][file_id] = {**entry, "_content": content}
    return json_response(entry)


async def job_create(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    model, training_file = body.get("model"), body.get("training_file")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is a required property", param="model")
    for param in ("training_file", "validation_file"):
        file_id = body.get(param)
        if (param == "training_file" or file_id) and file_id not in request.app[_FILES]:
            raise BadRequest(f"invalid {param}: {file_id!r}", param=param)
    job = {
        "object": "fine_tuning.job",
        "id": _new_id(request, "ftjob"),
        "model": model,
        "created_at": int(time.time()),
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-fake",
        "result_files": [],
        "status": "queued",
        "validation_file": body.get("validation_file"),
        "training_file": training_file,
        "hyperparameters": body.get("hyperparameters") or {},
        "suffix": body.get("suffix"),
        "trained_tokens": None,
        "error": None,
        "_polls": 0,
        "_events": [],
    }
    _event(request, job, "Created fine-tuning job")
    request.app[_JOBS][job["id"]] = job
    return json_response(_public(job))


def _advance(request: web.Request, job: dict, opts: dict[str, Any]) -> None:
    """One poll's worth of progress: queued -> running (steps) -> succeeded or failed."""
    if job["status"] in FINISHED:
        return
    total = opts.get("ft_polls", DEFAULT_POLLS)
    if job["status"] == "queued":
        job["status"] = "running"
        _event(request, job, "Fine-tuning job started")
        return
    job["_polls"] += 1
    step = job["_polls"]
    loss = round(2.0 / step, 4)
    _event(
        request,
        job,
        f"Step {step}/{total}: training loss={loss}",
        step=step,
        total_steps=total,
        train_loss=loss,
    )
    if step < total:
        return
    job["finished_at"] = int(time.time())
    if opts.get("ft_fail"):
        job["status"] = "failed"
        job["error"] = {
            "code": "invalid_training_file",
            "message": "fake upstream: the training file has too few examples",
            "param": "training_file",
        }
        _event(request, job, "Fine-tuning job failed", error=True)
        return
    job["status"] = "succeeded"
    suffix = job["suffix"] or "fake"
    job["fine_tuned_model"] = f"ft:{job['model']}:{suffix}:{job['id']}"
    job["trained_tokens"] = 1000 * step
    _event(request, job, "The job has successfully completed")


async def job_get(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    _advance(request, job, opts)
    return json_response(_public(job))


async def job_list(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    jobs = [_public(job) for job in reversed(request.app[_JOBS].values())]
    return json_response({"object": "list", "data": jobs, "has_more": False})


async def job_cancel(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    if job["status"] in FINISHED:
        raise BadRequest(f"The job is already {job['status']}", code="job_finished")
    job["status"] = "cancelled"
    job["finished_at"] = int(time.time())
    _event(request, job, "Fine-tuning job cancelled")
    return json_response(_public(job))


async def job_events(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    return json_response(
        {"object": "list", "data": list(reversed(job["_events"])), "has_more": False}
    )
