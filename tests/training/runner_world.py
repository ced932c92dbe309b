"""What the runner's tests share: jobs whose trainer is tests/training/trainers/fake.py,
and a job run in a thread of its own (as a worker runs it) that a test can act on."""

import hashlib
import itertools
import json
import sys
import threading
from pathlib import Path

from django.db import connections

from ai.instances import procs
from ai.models import AIModel, Dataset, Trainer, TrainerKind, TrainingJob
from ai.training import runner
from tests.servers import wait_for

FAKE = Path(__file__).resolve().parent / "trainers" / "fake.py"
DATA = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    * 2
)
_names = itertools.count()


def dataset(**fields) -> Dataset:
    return Dataset.objects.create(
        name="train.jsonl",
        content=DATA,
        bytes=len(DATA),
        lines=2,
        sha256=hashlib.sha256(DATA).hexdigest(),
        **fields,
    )


def trainer(mode: str = "ok", *args: str, **fields) -> Trainer:
    fields.setdefault("kind", TrainerKind.COMMAND)
    fields.setdefault(
        "command", [sys.executable, str(FAKE), "--config", "{config}", "--mode", mode, *args]
    )
    return Trainer.objects.create(name=f"fake-{next(_names)}", **fields)


def job(mode: str = "ok", *args: str, trainer_fields=None, **fields) -> TrainingJob:
    """A queued job of the fake trainer in ``mode``."""
    row = trainer(mode, *args, **(trainer_fields or {}))
    model = fields.pop("base_model", None) or AIModel.objects.create(
        name=f"tiny-base-{next(_names)}"
    )
    fields.setdefault("dataset", dataset())
    return TrainingJob.objects.create(
        base_model=model,
        base_model_name=model.name,
        trainer=row,
        trainer_kind=row.kind,
        **fields,
    )


class Running:
    """``runner.job_run(job)`` in a thread of its own, as a worker runs it."""

    # The trainers' process groups seen so far, for kill_strays() after a failed test.
    groups: set[int] = set()

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            runner.job_run(self.job.pk, worker="test-worker")
        except BaseException as exc:  # re-raised in the test's thread by join()
            self.error = exc
        finally:
            connections.close_all()

    def trainer_pids(self) -> tuple[int, int]:
        """The trainer's pid and its grandchild's, once it said them."""

        def said():
            from ai.models import TrainingEvent

            line = TrainingEvent.objects.filter(job_id=self.job.pk, message__startswith="pids ")
            message = line.values_list("message", flat=True).first()
            return message and tuple(int(pid) for pid in message.split()[1:])

        pids = wait_for(said, 30, "the trainer to say its pids")
        Running.groups.add(pids[0])
        return pids

    def join(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "job_run did not return"
        if self.error:
            raise self.error


ENQUEUE = """
import uuid
from ai.models import AIModel, Dataset, Trainer, TrainingJob
from ai.tasks import training_run_task

data = b'{{"messages": [{{"role": "user", "content": "hi"}}]}}' + b"\\n"
model, _ = AIModel.objects.get_or_create(name="tiny-base")
dataset = Dataset.objects.create(
    name="train.jsonl", content=data, bytes=len(data), lines=1, sha256="0" * 64
)
trainer = Trainer.objects.create(name=f"fake-{{uuid.uuid4()}}", kind="command", command={argv})
job = TrainingJob.objects.create(
    base_model=model, base_model_name=model.name, dataset=dataset, trainer=trainer,
    trainer_kind=trainer.kind,
)
training_run_task.delay(job.id)
print(job.id)
"""


def enqueue_code(mode: str, *args: str) -> str:
    """`manage.py shell -c` code that makes a job of the fake trainer in ``mode`` and
    enqueues its task, as a web process does; it prints the job's id."""
    argv = [sys.executable, str(FAKE), "--config", "{config}", "--mode", mode, *args]
    return ENQUEUE.format(argv=json.dumps(argv))


def kill_strays() -> None:
    """SIGKILL what is left of the trainers' groups (a test that failed leaves them)."""
    while Running.groups:
        procs.kill_group(Running.groups.pop())


def gone(*pids: int) -> bool:
    """Whether none of ``pids`` runs any more (a zombie does not run)."""
    return not any(procs.is_alive(pid, None) for pid in pids)
