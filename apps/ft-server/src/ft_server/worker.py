"""A job's own process: `python -m ft_server.worker --db FT.DB --job ID --log FILE`.

The server starts one per running job, so training runs in a child process through the same
orchestration as `ft train` (`ft_runs.training.train`): the run is an ordinary run folder,
recorded in the job store, locked by the per-run lock while it trains.

Stopping: SIGTERM is `ft train`'s Ctrl-C (a checkpoint, then stop; before the training loop
starts, at once). The server sends it to cancel. If the server itself dies (even by SIGKILL)
the worker notices its parent is gone and stops the same way, so a job never runs on without
the server that would record it: it ends `interrupted`, resumable from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ft_runs.store import JobStore


class _JobRunStore(JobStore):
    """The job store, noting on the job which run it created (as soon as the folder exists)."""

    job_id: str = ""

    def create_run(self, run_id: str, **kwargs: Any) -> Any:
        record = super().create_run(run_id, **kwargs)
        self.update_job(self.job_id, run_id=run_id)
        return record


def _watch_parent(parent: int) -> None:
    """Stop this process (as Ctrl-C would: checkpoint first) once the server is gone."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(store: _JobRunStore, job_id: str, log: Path) -> str:
    """Run the job; record how it ended on the job; return that status."""
    job = store.get_job(job_id)
    request = job.request
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8", buffering=1) as out:

        def say(message: str) -> None:
            out.write(f"{message}\n")

        status, error, result = "failed", None, None
        try:
            if job.kind == "pull":
                result = _pull(store, job_id, request, say)
                status = "completed"
            elif job.kind in ("export", "evaluate"):
                result = _run_other(store, job.kind, request, say)
                status = "completed"
            elif job.kind == "tune":
                from ft_server.tune_api import run_tune_job

                result, status = run_tune_job(store, request, say)
            elif job.kind != "train":
                raise ValueError(f"unknown job kind {job.kind!r}")
            else:
                result, status = _train(store, request, say)
        except KeyboardInterrupt:  # a second signal, or one before the training loop started
            status = "interrupted"
            say("stopped")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            say(traceback.format_exc())
        if status == "interrupted" and store.get_job(job_id).cancel_requested:
            status = "cancelled"
        store.update_job(
            job_id, expect="running", status=status, error=error, result_json=result, pid=None
        )
        say(f"job {job_id}: {status}")
    return status


def _train(store: _JobRunStore, request: dict[str, Any], say: Any) -> tuple[dict[str, Any], str]:
    """A training job: `ft train` (or `ft train --resume RUN`) of the request's config."""
    from ft_runs.training import train

    resume = request.get("resume") or None
    config = request.get("config_path")
    outcome = train(
        Path(config) if config else None,
        overrides=request.get("overrides", []),
        profile=request.get("profile"),
        resume=resume,
        force=bool(request.get("force")),
        say=say,
        store=store,
    )
    result = {
        "run_id": outcome.run_id,
        "run_dir": str(outcome.folder.path),
        "reason": outcome.result.reason,
        "step": getattr(outcome.result, "step", None),
    }
    status = {"completed": "completed", "failed": "failed"}.get(outcome.status, "interrupted")
    return result, status


def _pull(store: _JobRunStore, job_id: str, request: dict[str, Any], say: Any) -> dict[str, Any]:
    """A model pull (`ft models pull NAME`): into the Hugging Face cache (or a GGUF import).
    While it downloads, the job's `result` holds `{"bytes": N}`, what the cache holds so far."""
    from ft_models.hub import cache_folder
    from ft_models.resolve import resolve_model

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    name = request["model"]
    folder = cache_folder(name) if name.count("/") == 1 else None
    done = threading.Event()

    def report() -> None:
        while not done.wait(0.5):
            if folder is not None and folder.is_dir():
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                store.update_job(job_id, expect="running", result_json={"bytes": size})

    watcher = threading.Thread(target=report, name="pull-progress", daemon=True)
    watcher.start()
    try:
        resolved = resolve_model(name, revision=request.get("revision"), progress=False)
    finally:
        done.set()
        watcher.join()
    say(f"model: {name} -> {resolved.path} ({resolved.reason})")
    size = sum(p.stat().st_size for p in Path(resolved.path).rglob("*") if p.is_file())
    return {
        "model": name,
        "path": str(resolved.path),
        "kind": resolved.kind,
        "repo_id": resolved.repo_id,
        "revision": resolved.commit or resolved.revision,
        "bytes": size,
    }


def _run_other(store: _JobRunStore, kind: str, request: dict[str, Any], say: Any) -> dict[str, Any]:
    """An export (`ft export RUN --format ...`) or evaluation (`ft evaluate RUN`) job. SIGTERM
    (cancel) stops it at once: there is nothing to checkpoint."""
    from ft_runs.run_folder import RunFolder

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    folder = RunFolder(Path(store.get_run(request["run_id"]).run_dir))
    if kind == "export":
        from ft_runs.exports import export_run

        out = export_run(
            folder,
            request["format"],
            checkpoint=request.get("checkpoint"),
            quant=request.get("quant"),
            dtype=request.get("dtype"),
            say=say,
        )
        return {
            "format": out.format,
            "path": str(out.path),
            "files": [str(f) for f in out.files],
            "verified": out.verification is not None,
            "notes": list(out.notes),
        }
    from ft_runs.evaluate import evaluate_run

    evaluation = evaluate_run(
        folder,
        checkpoint=request.get("checkpoint"),
        data=request.get("data"),
        samples=request.get("samples", 5),
        max_examples=request.get("max_examples", 50),
        max_tokens=request.get("max_tokens", 128),
        compare_base=request.get("compare_base", True),
        store=store,
        say=say,
    )
    return {**evaluation.to_dict(), "file": str(evaluation.file) if evaluation.file else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ft_server.worker")
    p.add_argument("--db", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--parent", type=int, default=None)
    args = p.parse_args(argv)
    if args.parent:
        _watch_parent(args.parent)
    store = _JobRunStore(args.db)
    store.job_id = args.job
    store.update_job(args.job, pid=os.getpid())
    status = run_job(store, args.job, Path(args.log))
    sys.exit(0 if status == "completed" else 1)


if __name__ == "__main__":
    main()
