"""Training jobs (seed 004's training API; OpenAI's files and fine-tuning jobs).

A dataset is uploaded and checked line by line (``datasets``); a job is started by
a user with the admin or trainer role (``services.job_start``: checks, quotas, the
row, then ``ai.tasks.training_run_task`` on Celery's ``training`` queue); the worker
that takes it runs it (``runner.job_run``): the trainer as a child process in its
own process group, its progress read as JSON lines from stdout (``protocol``), the
job's row and events written as it goes, the group killed on cancel or timeout. A
succeeded job leaves a ``TrainedArtifact`` that ``POST /api/v1/ai/models/deploy``
serves as a model (``deploy``).

``datasets``   JSONL checks (line number and reason), create and delete
``protocol``   the trainer's progress lines: progress, metrics, log, result, error
``trainers``   each kind's command line and config file: builtin, command, upstream
``runner``     one job on a worker: the process group, progress, cancel, timeout, outcome
``upstream``   a job forwarded to an upstream's /fine_tuning/jobs and polled
``causal_lm``  the built-in trainer (``python -m ai.training.causal_lm``; the ``train``
               extra: torch, transformers, peft), LoRA or full fine-tuning
``services``   writes: start (checks, roles, quotas), cancel, events
``orphans``    beat's check: running jobs whose worker is gone are failed
``selectors``  reads: the jobs and datasets a caller may see
``deploy``     a trained artifact served as a model (a local instance or an upstream model id)
``admin``      the admin pages: trainers, jobs (status colours, loss chart, log tail);
               ``dataset_admin`` the Datasets page

The routes are in ``ai.api.training`` (seed 004) and ``ai.api.fine_tuning`` (OpenAI).
"""
