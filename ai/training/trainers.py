"""Each trainer kind's command line, environment and the job's config file.

A ``builtin`` or ``command`` trainer is a program the runner starts; it reads its
job from the JSON file written by ``write_config`` (its path is ``{config}`` in the
command) and reports on stdout (``protocol``). An ``upstream`` trainer has no
program: ``ai.training.upstream`` forwards the job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from django.conf import settings

from ..instances.launch import host_environment
from ..models import TrainerKind, TrainingJob

BUILTIN_MODULE = "ai.training.causal_lm"
CONFIG_PLACEHOLDER = "{config}"


class CannotRun(Exception):
    """The job's trainer cannot be started; the message is the job's error."""


def job_dir(job: TrainingJob) -> Path:
    """Where a worker keeps one job's files: its config, dataset copies and output."""
    return Path(settings.TRAINING_OUTPUT_DIR) / job.public_id


def command(job: TrainingJob, config_path: Path) -> list[str]:
    """The trainer's argument list, ``{config}`` replaced by the config file's path."""
    if job.trainer_kind == TrainerKind.BUILTIN:
        template = [sys.executable, "-m", BUILTIN_MODULE, "--config", CONFIG_PLACEHOLDER]
    elif job.trainer_kind == TrainerKind.COMMAND:
        if job.trainer is None:
            raise CannotRun("the job's trainer was deleted")
        template = job.trainer.command
        if (
            not isinstance(template, list)
            or not template
            or not all(isinstance(arg, str) for arg in template)
            or not template[0]
        ):
            raise CannotRun("the trainer's command is empty (or not a list of strings)")
    else:
        raise CannotRun(f"a {job.trainer_kind} trainer runs no program")
    return [arg.replace(CONFIG_PLACEHOLDER, str(config_path)) for arg in template]


def environment(job: TrainingJob) -> dict[str, str]:
    """The host's part of the worker's environment (never Switchboard's settings or
    secrets: the instances' rule, ``launch.host_environment``), plus the trainer's own."""
    env = host_environment()
    # A Python trainer's progress lines must not wait in a full buffer.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if job.trainer_kind == TrainerKind.BUILTIN:
        # ``python -m ai.training.causal_lm`` imports from this checkout.
        path = [str(settings.BASE_DIR), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    own = job.trainer.environment if job.trainer and job.trainer.environment else {}
    env.update({str(name): str(value) for name, value in own.items()})
    return env


def hyperparameters(job: TrainingJob) -> dict:
    """The trainer's default options overridden by the job's hyperparameters."""
    options = job.trainer.options if job.trainer and job.trainer.options else {}
    return {**options, **(job.hyperparameters or {})}


def write_config(
    job: TrainingJob,
    dataset_path: Path,
    output_dir: Path,
    *,
    validation_dataset_path: Path | None = None,
) -> Path:
    """Write the job's JSON config file (brief 16's contract) in its directory; its path."""
    config = {
        "job_id": job.public_id,
        "base_model": job.base_model_name,
        "base_model_path": job.base_model.train_path if job.base_model else "",
        "dataset_path": str(dataset_path),
        "validation_dataset_path": str(validation_dataset_path)
        if validation_dataset_path
        else None,
        "output_dir": str(output_dir),
        "epochs": job.epochs,
        "hyperparameters": hyperparameters(job),
    }
    path = job_dir(job) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path
