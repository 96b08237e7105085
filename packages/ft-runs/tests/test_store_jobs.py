"""The jobs table: the server's queue, in the same SQLite store as the runs."""

from __future__ import annotations

import pytest

from ft_runs.store import JobNotFound, JobStore


def test_jobs_queue_in_order_and_change_state_only_from_what_was_expected(tmp_path):
    store = JobStore(tmp_path / "ft.db")
    for name in ("a", "b", "c"):
        store.create_job(name, "train", {"overrides": [f"x={name}"]})
    assert [j.id for j in store.list_jobs(status="queued")] == ["a", "b", "c"]
    assert store.claim_job("a") is True
    assert store.claim_job("a") is False  # one claimer wins
    assert store.update_job("b", expect="queued", status="cancelled") is True
    assert store.update_job("b", expect="queued", status="running") is False
    assert store.get_job("b").ended_at is not None
    store.update_job("a", run_id="run-1", result_json={"step": 2})
    a = JobStore(tmp_path / "ft.db").get_job("a")  # another process sees it
    assert (a.status, a.run_id, a.result, a.request) == (
        "running",
        "run-1",
        {"step": 2},
        {"overrides": ["x=a"]},
    )
    assert [j.id for j in store.list_jobs(status=("queued", "running"))] == ["a", "c"]
    with pytest.raises(JobNotFound):
        store.get_job("zzz")
    with pytest.raises(ValueError, match="job status"):
        store.update_job("a", status="exploded")
