"""Training (seed 004's training API, OpenAI's files and fine-tuning jobs): datasets,
the trainers an admin configures, jobs, their events, and what a job produced.

A job's row holds what was asked (base model, dataset, trainer, hyperparameters),
what the worker running it observed (status, progress, latest metrics, worker,
pid, heartbeat) and the outcome (error, or an artifact). Only the training task
(``ai.training.runner``) writes the observed half; a cancel only sets
``cancel_requested_at`` and the runner acts on it.
"""

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q


def _public_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def dataset_id() -> str:
    return _public_id("file")


def job_id() -> str:
    return _public_id("ftjob")


def artifact_id() -> str:
    return _public_id("ftart")


class Dataset(models.Model):
    """A training file (JSONL, OpenAI's chat fine-tuning format), checked line by line on upload.

    The content lives in the database with its row, so a training worker on any host
    reads it with nothing but the database shared, and an upload is stored whole or
    not at all. ``TRAINING_DATASET_MAX_BYTES`` bounds it.
    """

    public_id = models.CharField(max_length=40, unique=True, default=dataset_id, editable=False)
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="datasets",
        help_text="The owner; empty: owned by the user who uploaded it.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="datasets",
    )
    name = models.CharField(max_length=255, help_text="The uploaded file's name.")
    purpose = models.CharField(max_length=40, default="fine-tune")
    content = models.BinaryField(editable=False)
    bytes = models.PositiveBigIntegerField(default=0)
    lines = models.PositiveIntegerField(default=0, help_text="Training examples.")
    sha256 = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} ({self.public_id})"


class TrainerKind(models.TextChoices):
    BUILTIN = "builtin", "Built-in (python -m ai.training.causal_lm)"
    COMMAND = "command", "A trainer program"
    UPSTREAM = "upstream", "An upstream's fine-tuning API"


class Trainer(models.Model):
    """How jobs are trained: the built-in trainer, an admin's program, or an upstream's API.

    ``command`` is an argument list; ``{config}`` in it becomes the path of the job's
    JSON config file (what the built-in trainer reads too: base model path, dataset
    path, output dir, hyperparameters). The program reports progress as JSON lines on
    stdout (``ai.training.protocol``).
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=TrainerKind.choices, default=TrainerKind.BUILTIN)
    command = models.JSONField(
        default=list, blank=True, help_text='For "command": the argument list, with {config}.'
    )
    environment = models.JSONField(
        default=dict, blank=True, help_text="Environment variables for the trainer process."
    )
    upstream = models.ForeignKey(
        "ai.Upstream",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="trainers",
        help_text='For "upstream": the upstream whose /fine_tuning/jobs API trains.',
    )
    options = models.JSONField(
        default=dict, blank=True, help_text="Default hyperparameters, overridden by the job's."
    )
    timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: TRAINING_JOB_TIMEOUT."
    )
    is_default = models.BooleanField(
        default=False, help_text="Used when a job names no trainer (one at most)."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="trainer_one_default"
            ),
        ]

    def __str__(self):
        return self.name


class TrainingStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED = (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, TrainingStatus.CANCELLED)


class TrainingJob(models.Model):
    """One fine-tune: asked for by a user of an organisation, run by a Celery worker."""

    public_id = models.CharField(max_length=40, unique=True, default=job_id, editable=False)
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="training_jobs",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="training_jobs",
    )
    api_key = models.ForeignKey(
        "accounts.APIKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # What was asked. The names stay when the rows they name are deleted.
    base_model = models.ForeignKey(
        "ai.AIModel", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    base_model_name = models.CharField(max_length=200)
    dataset = models.ForeignKey(
        Dataset, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    validation_dataset = models.ForeignKey(
        Dataset, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    trainer = models.ForeignKey(
        Trainer, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    trainer_kind = models.CharField(max_length=20, choices=TrainerKind.choices)
    epochs = models.PositiveIntegerField(default=1)
    hyperparameters = models.JSONField(default=dict, blank=True)
    suffix = models.CharField(max_length=64, blank=True)
    # What the worker observed.
    status = models.CharField(
        max_length=20, choices=TrainingStatus.choices, default=TrainingStatus.QUEUED
    )
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    epoch = models.FloatField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="The latest metrics (loss).")
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="The Celery worker's name.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=255, blank=True)
    upstream_job_id = models.CharField(max_length=255, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    seconds_used = models.FloatField(default=0, help_text="Training time, for the monthly quota.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status"], name="trainingjob_status"),
            models.Index(fields=["organisation", "status"], name="trainingjob_org_status"),
        ]

    def __str__(self):
        return self.public_id

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


class TrainingEventKind(models.TextChoices):
    STATUS = "status", "Status"
    LOG = "log", "Log line"
    METRICS = "metrics", "Metrics"


class TrainingEvent(models.Model):
    """One line of a job's history: a status change, a trainer's log line, or its metrics."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=TrainingEventKind.choices)
    level = models.CharField(max_length=10, default="info")
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    step = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "kind", "id"], name="trainingevent_job_kind")]

    def __str__(self):
        return f"{self.kind}: {self.message[:60]}"


class ArtifactFormat(models.TextChoices):
    HF = "hf", "Hugging Face weights (safetensors)"
    HF_LORA = "hf_lora", "LoRA adapter over its base (Hugging Face PEFT)"
    GGUF = "gguf", "GGUF"
    UPSTREAM = "upstream", "A model id at the upstream that trained it"


class TrainedArtifact(models.Model):
    """What a succeeded job produced, ready to deploy (``POST /api/v1/ai/models/deploy``).

    A local artifact is a directory on ``node`` (the host whose worker trained it);
    an upstream one is ``upstream_model_id`` at ``upstream``.
    """

    public_id = models.CharField(max_length=40, unique=True, default=artifact_id, editable=False)
    job = models.OneToOneField(TrainingJob, on_delete=models.CASCADE, related_name="artifact")
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="trained_artifacts",
    )
    name = models.CharField(max_length=200, help_text="The fine-tuned model's name.")
    format = models.CharField(max_length=20, choices=ArtifactFormat.choices)
    node = models.CharField(max_length=63, blank=True, help_text="Where a local artifact is.")
    path = models.CharField(max_length=1000, blank=True)
    bytes = models.PositiveBigIntegerField(default=0)
    upstream = models.ForeignKey(
        "ai.Upstream", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    upstream_model_id = models.CharField(max_length=255, blank=True)
    deployed_model = models.ForeignKey(
        "ai.AIModel", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name
