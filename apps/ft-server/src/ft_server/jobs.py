"""The server's job queue: jobs in the ft-runs job store (table `jobs`), run one child process
each (`ft_server.worker`), at most `max_concurrent_trainings` at once, oldest first.

Nothing is lost when the server dies: the queue is the database. At start the server marks
`running` jobs whose process is gone `interrupted` (resumable: their run folder keeps its
checkpoints) and takes up again those whose process still lives; queued jobs stay queued.
A job's run is guarded by the run folder's lock (`ft_runs.run_lock`), so a run never trains
twice at once, whatever the queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from ft_runs.run_lock import pid_alive
from ft_runs.store import JobRecord, JobStore
from ft_server.settings import ServerSettings

log = logging.getLogger("ft_server.jobs")

POLL_S = 0.25


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


class JobManager:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        settings.paths.ensure()
        self.store = JobStore(settings.paths.database)
        self.jobs_dir = settings.paths.home / "jobs"
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.adopted: dict[str, int] = {}  # job id -> pid of a worker an earlier server started
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- life -----------------------------------------------------------------------------
    def recover(self) -> None:
        """After a restart: running jobs whose worker died are interrupted; live ones adopted."""
        for job in self.store.list_jobs(status="running"):
            if job.pid and pid_alive(job.pid):
                self.adopted[job.id] = job.pid
            else:
                self.store.update_job(
                    job.id,
                    expect="running",
                    status="interrupted",
                    pid=None,
                    error="the server stopped while the job ran; resume it "
                    f"(POST /api/training/{job.id}/resume)",
                )
        self.store.mark_stale_runs()

    async def start(self) -> None:
        self.recover()
        self._task = asyncio.create_task(self._loop(), name="ft-server-jobs")

    async def stop(self) -> None:
        """Server shutdown: running jobs are stopped with a checkpoint (the queue keeps the
        rest); their workers record them interrupted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        for job_id, child in list(self.children.items()):
            try:
                await asyncio.to_thread(child.wait, 120)
            except subprocess.TimeoutExpired:
                child.kill()
            self._reaped(job_id, child.wait())
        self.children.clear()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("job queue")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    def tick(self) -> None:
        """Reap finished workers, then start queued jobs up to the limit."""
        for job_id, child in list(self.children.items()):
            code = child.poll()
            if code is not None:
                del self.children[job_id]
                self._reaped(job_id, code)
        for job_id, pid in list(self.adopted.items()):
            if not pid_alive(pid):
                del self.adopted[job_id]
                self._reaped(job_id, None)
        free = self.settings.max_concurrent_trainings - len(self.children) - len(self.adopted)
        if free <= 0:
            return
        for job in self.store.list_jobs(status="queued", limit=free):
            if self.store.claim_job(job.id):
                self._spawn(job)

    def _reaped(self, job_id: str, code: int | None) -> None:
        """A worker exited: if it did not record the end itself (killed), record it here."""
        why = f"its process ended (exit code {code}) without recording how" if code else None
        try:
            cancelled = bool(self.store.get_job(job_id).cancel_requested)
        except LookupError:
            return
        self.store.update_job(
            job_id,
            expect="running",
            status="cancelled" if cancelled else "interrupted",
            pid=None,
            error=why or "its process ended without recording how",
        )

    def _spawn(self, job: JobRecord) -> None:
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["FT_HOME"] = str(self.settings.paths.home)
        argv = [
            sys.executable,
            "-m",
            "ft_server.worker",
            "--db",
            str(self.store.path),
            "--job",
            job.id,
            "--log",
            str(folder / "job.log"),
            "--parent",
            str(os.getpid()),
        ]
        with (folder / "worker.out").open("ab") as out:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
                start_new_session=True,
            )
        self.children[job.id] = child
        self.store.update_job(job.id, pid=child.pid)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # --- requests -------------------------------------------------------------------------
    def submit(self, kind: str, request: dict[str, Any], job_id: str | None = None) -> JobRecord:
        job = self.store.create_job(job_id or new_job_id(), kind, request)
        self.wake()
        return job

    def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: asked to checkpoint and stop (SIGTERM)."""
        if self.store.update_job(job_id, expect="queued", status="cancelled"):
            return self.store.get_job(job_id)
        job = self.store.get_job(job_id)
        if job.status == "running":
            self.store.update_job(job_id, expect="running", cancel_requested=1)
            child = self.children.get(job_id)
            with contextlib.suppress(ProcessLookupError):
                if child is not None:
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)
                elif job.pid and pid_alive(job.pid):
                    os.kill(job.pid, signal.SIGTERM)
        return self.store.get_job(job_id)

    def resume(self, job_id: str) -> JobRecord:
        """An interrupted, cancelled or failed job goes back to the queue; its run continues
        from its newest checkpoint (or starts again, if it never made a run folder)."""
        job = self.store.get_job(job_id)
        request = dict(job.request)
        if job.run_id and job.kind == "train":
            request["resume"] = job.run_id
        if not self.store.update_job(
            job_id,
            expect=("interrupted", "cancelled", "failed"),
            status="queued",
            request_json=request,
            ended_at=None,
            error=None,
            cancel_requested=0,
        ):
            raise JobStateError(
                f"job {job_id} is {job.status}: only interrupted, cancelled or failed jobs "
                "can be resumed"
            )
        self.wake()
        return self.store.get_job(job_id)

    def queue_position(self, job: JobRecord) -> int | None:
        if job.status != "queued":
            return None
        queued = [j.id for j in self.store.list_jobs(status="queued")]
        return queued.index(job.id) + 1 if job.id in queued else None


class JobStateError(Exception):
    """The job is not in a state that allows what was asked."""
