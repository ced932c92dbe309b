"""`make run`: the whole product on one machine with nothing else installed.

Starts the fake upstream, seeds the demo model and this host's node row, then
runs uvicorn, a Celery worker, beat and the instance agent as child processes until Ctrl-C, which
stops all of them (the agent stops the local model instances it runs).
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.models import APIKey, Permission
from accounts.services import admin_ensure, apikey_create
from ai.instances.nodes import node_ensure_local
from ai.services import DEMO_MODEL, demo_seed
from panel.http import uvicorn_args

DEMO_KEY_NAME = "demo (make run)"


class Command(BaseCommand):
    help = (
        "Run web (uvicorn), a Celery worker, beat, the instance agent and the fake upstream "
        "for the demo."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--fake-upstream-port",
            type=int,
            default=int(os.environ.get("FAKE_UPSTREAM_PORT", "9100")),
        )

    def handle(self, *, host, port, fake_upstream_port, **options):
        self.children: list[subprocess.Popen] = []
        signal.signal(signal.SIGTERM, lambda *_: self._stop(0))
        try:
            self._start("fake-upstream", "-m", "fakeupstream", "--port", str(fake_upstream_port))
            admin, password = self._admin()
            demo_seed(upstream_base_url=f"http://127.0.0.1:{fake_upstream_port}/v1", user=admin)
            # The agent started below is this host's node: its row says where and with which key.
            node_ensure_local(update=True)
            plain = self._demo_key(admin)
            # The production server command, with its read timeouts (panel.http).
            self._start("web", "-m", "uvicorn", *uvicorn_args(host=host, port=port))
            self._start(
                "worker",
                "-m",
                "celery",
                "-A",
                "panel",
                "worker",
                "-l",
                "info",
                # Celery's default queue, and the training jobs' (GPU hosts run workers
                # for that one alone: `celery -A panel worker -Q training`).
                "-Q",
                f"celery,{settings.TRAINING_QUEUE}",
                "--concurrency",
                "2",
                "-n",
                "worker@%h",
            )
            self._start(
                "beat",
                "-m",
                "celery",
                "-A",
                "panel",
                "beat",
                "-l",
                "info",
                "-s",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
            )
            self._start("instance-agent", str(settings.BASE_DIR / "manage.py"), "instance_agent")
            self._banner(host, port, admin.username, password, plain)
            self._wait()
        except KeyboardInterrupt:
            pass
        finally:
            self._stop(None)

    def _admin(self):
        username = os.environ.get("ADMIN_USERNAME", "admin")
        email = os.environ.get("ADMIN_EMAIL", "admin@example.com")
        password = os.environ.get("ADMIN_PASSWORD", "")
        stored = Path(settings.DATA_DIR) / "admin-password"
        if not password:
            if not stored.exists():
                stored.write_text(secrets.token_urlsafe(12))
                stored.chmod(0o600)
            password = stored.read_text().strip()
        user, created = admin_ensure(username=username, email=email, password=password)
        if not created and not user.check_password(password):
            password = "(unchanged: the existing admin keeps its password)"
        return user, password

    def _demo_key(self, admin) -> str:
        # The plain key is never stored, so each run revokes the last demo key
        # and makes a new one to print.
        APIKey.objects.filter(user=admin, name=DEMO_KEY_NAME).update(is_revoked=True)
        _, plain = apikey_create(
            user=admin, name=DEMO_KEY_NAME, permissions=[Permission.READ, Permission.PROXY]
        )
        return plain

    def _start(self, name: str, *args: str) -> None:
        process = subprocess.Popen([sys.executable, *args], start_new_session=True)
        process.name = name
        self.children.append(process)

    def _banner(self, host, port, username, password, plain):
        base = f"http://{host}:{port}"
        self.stdout.write(self.style.SUCCESS(f"\nSwitchboard is running at {base}/admin/"))
        self.stdout.write(f"  chat page:      {base}/chat/ (sign in as the admin)")
        self.stdout.write(f"  admin user:     {username}")
        self.stdout.write(f"  admin password: {password}")
        self.stdout.write(f"  demo model:     {DEMO_MODEL}")
        self.stdout.write(f"  demo API key:   {plain}")
        self.stdout.write(f"  instance agent: {settings.INSTANCE_AGENT_URL} (local models)")
        self.stdout.write(
            f"  try:            curl {base}/v1/chat/completions "
            f"-H 'Authorization: Bearer {plain}' -H 'Content-Type: application/json' "
            f"""-d '{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "Hello"}}]}}'"""
        )
        self.stdout.write("Press Ctrl-C to stop everything.\n")
        self.stdout.flush()

    def _wait(self) -> None:
        reported = set()
        while True:
            for child in self.children:
                if child.poll() is None or child.name in reported:
                    continue
                if child.name == "fake-upstream":
                    # The demo keeps running: health checks mark its upstream unhealthy.
                    self.stderr.write("The fake upstream stopped; the panel keeps running.")
                    reported.add(child.name)
                    continue
                self.stderr.write(f"{child.name} exited with {child.returncode}; stopping.")
                return
            time.sleep(0.5)

    def _stop(self, exit_code):
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        # The agent first stops its instances, each within INSTANCE_STOP_GRACE.
        deadline = time.monotonic() + 10 + settings.INSTANCE_STOP_GRACE
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        self.children = []
        if exit_code is not None:
            sys.exit(exit_code)
