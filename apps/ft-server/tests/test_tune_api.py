"""Studies over HTTP: POST /api/tune/start runs `ft tune` in a job's worker process (the tiny
Llama, 2 trials of 2 steps); status and trials read the study as it runs and when it is done."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(16)
]


def study_body(model: Path, data: Path, space: dict) -> dict:
    return {
        "config": {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_seq_length": 64, "validation_split": 0.25},
            "training": {
                "backend": "torch",
                "max_steps": 2,
                "batch_size": 2,
                "eval_every": 1,
                "eval_samples": 0,  # the study needs the loss only
            },
            "logging": {"tensorboard": False},
            "tune": {"search_space": space},
        },
        "trials": 2,
        "sampler": "random",
        "name": "numbers",
    }


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "numbers.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.mark.slow
def test_a_study_started_over_http_runs_its_trials_as_runs(
    make_client, tiny_llama, data_file, tmp_path
):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    space = {"training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}
    r = client.post("/api/tune/start", json=study_body(tiny_llama, data_file, space))
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["study"]["name"], job["study"]["trials"]) == ("tune", "numbers", 2)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = client.get(f"/api/tune/{job['id']}/status").json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    log = client.get(f"/api/jobs/{job['id']}/log").json()["lines"]
    assert status["status"] == "completed", log
    assert status["study"]["finished"] == 2
    assert status["study"]["best"]["state"] == "COMPLETE"
    trials = client.get(f"/api/tune/{job['id']}/trials").json()["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    for trial in trials:
        assert 1e-4 <= trial["settings"]["training.learning_rate"] <= 1e-2
        run = client.get(f"/api/runs/{trial['run_id']}")
        assert run.status_code == 200, run.text


def test_a_search_space_ft_cannot_use_is_a_400(make_client, tiny_llama, data_file, tmp_path):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    space = {"method.alpha": {"same_as": "method.rank"}}
    r = client.post("/api/tune/start", json=study_body(tiny_llama, data_file, space))
    assert r.status_code == 400
    assert "tune.search_space.method.alpha.same_as: 'method.rank' is not a parameter" in r.text
    assert client.get("/api/tune/nope/status").status_code == 404


def test_the_default_space_and_the_settings_a_space_may_vary(make_client):
    from ft_runs.tune_space import DEFAULT_SPACE

    space = make_client().get("/api/tune/space").json()
    assert space["default"] == json.loads(json.dumps(DEFAULT_SPACE))
    assert space["samplers"] == ["tpe", "random", "grid"]
    by_key = {s["key"]: s for s in space["settings"]}
    assert set(DEFAULT_SPACE) <= set(by_key)
    assert by_key["training.learning_rate"] == {
        "key": "training.learning_rate",
        "type": "number",
        "choices": [],
        "minimum": None,
        "exclusive_minimum": 0.0,
        "maximum": None,
        "nullable": False,
        "default": 0.0002,
        "help": by_key["training.learning_rate"]["help"],
    }
    assert by_key["training.learning_rate"]["help"].startswith("Peak learning rate")
    assert (by_key["method.rank"]["type"], by_key["method.rank"]["minimum"]) == ("integer", 1)
    assert by_key["method.rslora"]["choices"] == [False, True]
    assert by_key["training.lr_scheduler"]["choices"] == ["constant", "linear", "cosine"]
    assert by_key["training.batch_size"]["choices"] == ["auto"]  # a whole number, or auto
    assert by_key["method.target_modules"]["type"] == "list"
    # Paths, names, mappings and the study's own settings are not varied by a study.
    for key in ("model.name", "data.train", "data.columns", "output.dir", "tune.trials"):
        assert key not in by_key


def validate(client, tune: dict) -> dict:
    r = client.post("/api/tune/validate", json={"config": {"tune": tune}})
    assert r.status_code == 200, r.text
    return r.json()


def test_validate_gives_the_messages_a_study_gives_before_it_starts(make_client):
    from ft_config import ConfigError, dump_yaml, load_config
    from ft_runs.tune_space import SearchSpaceError, check_space

    client = make_client()
    ok = validate(client, {})
    assert ok["valid"] and ok["problems"] == []
    assert ok["message"] == (
        "ft's default space is valid: 6 settings searched, 1 derived; 10 trials, sampler tpe"
    )
    assert [p["name"] for p in ok["parameters"]][:2] == ["training.learning_rate", "method.rank"]
    grid = validate(
        client, {"sampler": "grid", "search_space": {"method.rank": {"choices": [4, 8]}}}
    )
    assert grid["message"] == (
        "the search space is valid: 1 settings searched; 10 trials, sampler grid (2 combinations)"
    )
    assert grid["grid_size"] == 2

    # A key that is no setting: train.yml's own check names it, as /api/config/validate does.
    bad_key = {"search_space": {"method.rnk": {"choices": [4, 8]}}}
    with pytest.raises(ConfigError) as refused:
        load_config("train.yml", text=dump_yaml({"tune": bad_key}))
    r = validate(client, bad_key)
    assert not r["valid"]
    assert [(p["key"], p["message"], p["text"]) for p in r["problems"]] == [
        (p.key, p.message, str(p)) for p in refused.value.problems
    ]
    assert r["problems"][0]["key"] == "tune.search_space.method.rnk"
    assert r["problems"][0]["message"] == "no such setting (did you mean 'method.rank'?)"

    # The space's own rules: SearchSpaceError's message, split into the entry and what is wrong.
    for space, key, message in [
        (
            {"training.learning_rate": {"low": 1e-3, "high": 1e-5}},
            "tune.search_space.training.learning_rate",
            "`low` (0.001) must be below `high` (1e-05)",
        ),
        (
            {"method.dropout": {"choices": [0.0, 1.5]}},
            "tune.search_space.method.dropout.choices",
            "1.5: must be at most 0.9, got 1.5",
        ),
        (
            {"method.rank": {"low": 2, "high": 16}},
            "tune.search_space.method.rank",
            "the range draws fractions such as 6.46, which method.rank refuses (expected a whole "
            "number, got 6.46); add `int: true` or give `choices`",
        ),
        (
            {"method.alpha": {"same_as": "method.rank"}},
            "tune.search_space.method.alpha.same_as",
            "'method.rank' is not a parameter above this one",
        ),
    ]:
        config = load_config("train.yml", text=json.dumps({"tune": {"search_space": space}}))
        with pytest.raises(SearchSpaceError) as caught:
            check_space(config)
        assert str(caught.value) == f"{key}: {message}"
        r = validate(client, {"search_space": space})
        assert not r["valid"]
        assert r["problems"] == [
            {"location": None, "key": key, "message": message, "text": f"{key}: {message}"}
        ]
    # A grid tries every value: ft's default space, with its ranges, is refused for `grid`.
    r = validate(client, {"sampler": "grid"})
    assert [(p["key"], p["message"]) for p in r["problems"]] == [
        (
            "tune.search_space.training.learning_rate",
            "a range needs `step` (or `choices`) for `sampler: grid`, which tries every value",
        )
    ]


def test_a_value_the_setting_refuses_is_a_400_before_any_study_exists(
    make_client, tiny_llama, data_file, tmp_path
):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    space = {"training.lr_scheduler": {"choices": ["cosine", "cosin"]}}
    r = client.post("/api/tune/start", json=study_body(tiny_llama, data_file, space))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "tune.search_space.training.lr_scheduler.choices: cosin: expected one of 'constant', "
        "'linear', 'cosine', got 'cosin' (did you mean 'cosine'?)"
    )
    assert client.get("/api/jobs").json()["jobs"] == []
