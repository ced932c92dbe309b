"""One training job on a Celery worker (task 16b builds this: see ai/training/__init__.py)."""


def job_run(job_id: int) -> None:
    raise NotImplementedError("the training runner is being built (issue 16)")
