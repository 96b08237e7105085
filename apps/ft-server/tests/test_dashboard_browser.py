"""The dashboard in a real browser (Playwright driving Debian's Chromium) against one live
ft-server shared by the module, on the tiny random Llama. Each test saves a screenshot under
$FT_SCREENSHOTS (default: the session's tmp folder)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ft_testing.asgi_server import ThreadedServer

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "no /usr/bin/chromium: install Debian's chromium (apt-get install chromium) to run the "
        "dashboard's browser tests",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api")
playwright_api.expect.set_options(timeout=240_000)

KEY = "dash-key"
ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(16)
]
MAX_STEPS = 5000  # never reached: the run is cancelled twice and exported from a checkpoint
TIMEOUT_MS = 240_000


class Server(ThreadedServer):
    """ft-server on a real socket, with an httpx client that holds the API key."""

    def __init__(self, settings: Any) -> None:
        from ft_server import create_app

        super().__init__(create_app(settings))
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )

    def stop(self) -> None:
        self.http.close()
        super().stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard")
    data = folder / "data"
    data.mkdir()
    (data / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder


@pytest.fixture(scope="module")
def server(work: Path, tiny_llama: Path) -> Iterator[Server]:
    from ft_config.paths import app_paths
    from ft_config.secrets import Secret
    from ft_server import ServerSettings

    settings = ServerSettings(
        api_key=Secret(KEY),
        paths=app_paths({"FT_HOME": str(work / "home")}),
        allowed_roots=(tiny_llama.parent, work),
        inference_allow=("*",),
        inference_backend="torch",
        heartbeat_seconds=1.0,
        max_concurrent_trainings=2,  # the short run trains beside the long one
    )
    live = Server(settings)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("FT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any, server: Server, tiny_llama: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.add_init_script(f"localStorage.setItem('ft_api_key', {json.dumps(KEY)})")
    # The dataset pages' previews use the tiny model's tokenizer (not ft's default model).
    model = json.dumps(str(tiny_llama))
    context.add_init_script(f"localStorage.setItem('ft_dataset_model', {model})")
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], errors


def wait_job(server: Server, job_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        job = server.http.get(f"/api/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']}")


def steps_shown(page: Any) -> list[int]:
    return page.evaluate("window.ftMonitor.steps.slice()")


# --- configuration builder -> monitor -> cancel -> resume -> export -> chat -----------------


@pytest.mark.slow  # four worker processes (each imports torch): minutes on a loaded machine
def test_build_a_config_train_reload_cancel_resume_export_and_chat(
    page, server, work, tiny_llama, shots
):
    expect = playwright_api.expect
    # A short run that completes (for the chat and the comparison), started first so that it
    # trains while the long one is built in the form.
    short_yaml = "\n".join(
        [
            f"model:\n  name: {tiny_llama}",
            f"data:\n  train: {work / 'data' / 'numbers.jsonl'}\n  max_seq_length: 64",
            "  validation_split: 0.25",  # evaluated at its last step, with samples
            "training:\n  backend: torch\n  max_steps: 3\n  batch_size: 2\n",
        ]
    )
    second = server.http.post("/api/training/start", json={"config_yaml": short_yaml})
    assert second.status_code == 202, second.text
    page.goto(server.url + "/config")
    expect(page.locator("#config-status")).to_contain_text("train.yml is valid")
    # A bad value gets ft config validate's message next to its field.
    page.get_by_label("training.max_steps", exact=True).fill("0")
    problem = page.locator("#cfg-training-max-steps-problem")
    expect(problem).to_be_visible()
    from ft_config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config("train.yml", text="training:\n  max_steps: 0\n")
    [message] = [p.message for p in refused.value.problems]
    expect(problem).to_have_text(message)
    expect(page.locator("#config-problems li")).to_have_text([str(refused.value)])
    # Fill it in properly.
    for key, value in {
        "model.name": str(tiny_llama),
        "data.train": str(work / "data" / "numbers.jsonl"),
        "data.max_seq_length": "64",
        "data.validation_split": "0.25",
        "training.max_steps": str(MAX_STEPS),
        "training.batch_size": "2",
        "training.eval_every": "20",
        "training.save_every": "1000",
    }.items():
        page.get_by_label(key, exact=True).fill(value)
    page.get_by_label("training.backend", exact=True).select_option("torch")
    expect(page.locator("#config-status")).to_contain_text("train.yml is valid")
    expect(page.locator("#config-memory")).to_contain_text("at the peak")
    # A default that may be none: null typed in the field writes null (no clipping).
    page.get_by_label("training.max_grad_norm", exact=True).fill("null")
    expect(page.locator("#config-yaml")).to_have_value(re.compile(r"max_grad_norm: null"))
    expect(page.locator("#config-status")).to_contain_text("train.yml is valid")
    yaml_text = page.locator("#config-yaml").input_value()
    assert f"max_steps: {MAX_STEPS}" in yaml_text and "backend: torch" in yaml_text
    page.screenshot(path=shots / "config-builder.png", full_page=False)

    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/monitor/"))
    job_id = page.url.rsplit("/", 1)[1]
    chart = page.locator("#chart-loss")
    # The loss chart gains points as the job trains.
    expect(chart).to_have_attribute("data-points", re.compile(r"^([3-9]|\d\d+)$"))
    before = steps_shown(page)
    page.screenshot(path=shots / "monitor-running.png")
    # Reload mid-run: every point is there again, in order, none twice.
    page.reload()
    expect(chart).to_have_attribute("data-points", re.compile(r"^\d+$"))
    page.wait_for_function(f"window.ftMonitor.steps.length > {len(before)}")
    after = steps_shown(page)
    assert after[: len(before)] == before
    assert after == list(range(1, len(after) + 1))

    # Cancel: a checkpoint, then cancelled.
    page.get_by_role("button", name="Cancel (checkpoint first)").click()
    expect(page.locator("#job-state")).to_contain_text(f"{job_id}: cancelled")
    job = server.http.get(f"/api/jobs/{job_id}").json()
    # The cancel's checkpoint is at the step the run reached (a slow machine may also have
    # passed step 20's evaluation, whose best checkpoint is kept beside it).
    checkpoint = job["run"]["checkpoints"][-1]
    assert checkpoint == job["run"]["step"], job["run"]
    page.screenshot(path=shots / "monitor-cancelled.png")
    # Resume: the chart goes on from the checkpoint, no step lost or repeated; cancel again.
    page.get_by_role("button", name="Resume").click()
    page.wait_for_function(f"window.ftMonitor.steps.length >= {checkpoint + 3}")
    page.get_by_role("button", name="Cancel (checkpoint first)").click()
    expect(page.locator("#job-state")).to_contain_text(f"{job_id}: cancelled")
    run = server.http.get(f"/api/jobs/{job_id}").json()["run"]
    page.wait_for_function(f"window.ftMonitor.steps.length === {run['step']}")
    assert steps_shown(page) == list(range(1, run["step"] + 1))
    assert run["checkpoints"][-1] == run["step"] > checkpoint
    log = page.locator("#monitor-log").inner_text()
    page.screenshot(path=shots / "monitor-resumed.png")
    assert f"from step {checkpoint}" in server.http.get(f"/api/jobs/{job_id}/log").text, log

    # Export its last checkpoint as a PEFT adapter and download a file.
    page.goto(server.url + f"/exports#{run['id']}")
    expect(page.get_by_label("Run", exact=True)).to_have_value(run["id"])
    page.get_by_label("Format").select_option("peft")
    page.get_by_label("Checkpoint").fill("last")
    page.get_by_role("button", name="Export", exact=True).click()
    row = page.locator("#ex-jobs tbody tr").first
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("peft")
    download_button = page.get_by_role("button", name=re.compile(r"adapter_config\.json$"))
    with page.expect_download() as got:
        download_button.click()
    assert json.loads(Path(got.value.path()).read_text())["peft_type"] == "LORA"
    page.screenshot(path=shots / "exports.png")

    # The short run's adapter in the chat, beside the base model.
    done = wait_job(server, second.json()["id"], ("completed", "failed"))
    assert done["status"] == "completed", done
    short_run = done["run_id"]
    # Its monitor, opened afresh: the Samples panel shows the answers of its evaluation.
    page.goto(server.url + f"/monitor/{done['id']}")
    answered = page.locator("#training-samples .eval-samples")
    expect(answered.locator("h3")).to_contain_text("Step 3 · eval loss")
    expect(answered.locator(".sample-prompt").first).to_contain_text("Say the number")
    expect(answered.locator(".sample-reference").first).to_have_text(
        re.compile(r"^The number is \d+\.$")
    )
    page.goto(server.url + "/chat")
    page.get_by_label("Model", exact=True).select_option(short_run)
    page.get_by_label("Compare with").select_option(str(tiny_llama))
    page.get_by_label("Max tokens").fill("6")
    page.get_by_label("Message").fill("What is the number?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("#chat-log li.assistant small")
    expect(answer).to_contain_text(re.compile(rf"{short_run} · \d+ tokens · (length|stop)"))
    expect(page.locator("#chat-log-other li.assistant small")).to_contain_text(" tokens · ")
    page.screenshot(path=shots / "chat.png")

    # Runs: a report, and the two runs compared.
    page.goto(server.url + "/runs")
    page.get_by_role("button", name=f"Report of {short_run}", exact=True).click()
    expect(page.locator("#rep-run")).to_have_text(short_run)
    for box in page.get_by_role("checkbox").all():
        box.check()
    page.get_by_role("button", name="Compare the ticked runs").click()
    expect(page.locator("#cmp-settings")).to_contain_text("training.max_steps")
    expect(page.locator("#cmp-metrics")).to_contain_text("final train loss")
    page.screenshot(path=shots / "runs-compare.png", full_page=True)


def test_chart_draws_50000_points(page, server, shots):
    """uPlot with 50,000 points in one chart: the time to build it and to redraw it."""
    page.goto(server.url + "/monitor/none")
    timing = page.evaluate(
        """async () => {
        const n = 50000, xs = [], a = [], b = [];
        for (let i = 0; i < n; i++) {
          xs.push(i + 1); a.push(3 * Math.exp(-i / 9000) + Math.sin(i / 7) * 0.1);
          b.push(i % 500 ? null : a[i] + 0.05);
        }
        const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
        const chartIn = () => {
          const box = document.createElement('div'); box.style.width = '900px';
          document.querySelector('main').append(box);
          const chart = FT.lineChart(box, ['train loss', 'eval loss']);
          chart.drawn = 0;
          chart.plot.hooks.draw = [...(chart.plot.hooks.draw || []), () => { chart.drawn = performance.now(); }];
          return [box, chart];
        };
        // All 50,000 points at once (a reload of a long run), until uPlot has drawn them.
        const [box, chart] = chartIn();
        let t0 = performance.now();
        chart.set([xs, a, b]);
        await frame();
        const first_ms = chart.drawn - t0;
        const redraw_ms = [];
        for (let k = 0; k < 5; k++) {
          t0 = performance.now(); chart.plot.redraw(); await frame(); redraw_ms.push(chart.drawn - t0);
        }
        // The monitor's path: 50,000 points pushed one by one, drawn on the next frame.
        const [box2, live] = chartIn();
        t0 = performance.now();
        for (let i = 0; i < n; i++) live.push(xs[i], [a[i], b[i]]);
        const pushed_ms = performance.now() - t0;
        await frame();
        return { points: box.dataset.points, pushed_points: box2.dataset.points, first_ms,
                 redraw_ms, pushed_ms, pushed_then_drawn_ms: live.drawn - t0 };
    }"""
    )
    assert timing["points"] == timing["pushed_points"] == "50000"
    assert timing["first_ms"] > 0 and all(ms > 0 for ms in timing["redraw_ms"])
    (shots / "chart-50000.json").write_text(json.dumps(timing, indent=2))
    print("chart with 50,000 points:", timing)
    page.screenshot(path=shots / "chart-50000.png")


# --- a hyperparameter search: the builder's search space editor -> the study's page ---------


@pytest.mark.slow  # a study of two runs in a worker process
def test_build_a_search_space_start_a_search_and_watch_its_trials(
    page, server, work, tiny_llama, shots
):
    import yaml

    from ft_config import ConfigError, load_config
    from ft_runs.tune_space import DEFAULT_SPACE, SearchSpaceError, parse_space

    expect = playwright_api.expect
    page.goto(server.url + "/config")
    expect(page.locator("#config-status")).to_contain_text("train.yml is valid")
    # ft's default space fills the editor; while unchanged, train.yml leaves it empty.
    rows = page.locator("#tune-rows .space-row")
    expect(rows).to_have_count(len(DEFAULT_SPACE))
    assert [r.get_attribute("data-key") for r in rows.all()] == list(DEFAULT_SPACE)
    expect(page.locator("#tune-space-note")).to_contain_text("ft's default LoRA space")
    expect(page.locator("#tune-status")).to_have_text(
        "ft's default space is valid: 6 settings searched, 1 derived; 10 trials, sampler tpe"
    )
    assert "search_space" not in page.locator("#config-yaml").input_value()

    # A train.yml imported with a key that is no setting: the editor shows its row, and the
    # row says what `ft config validate` (and `ft tune`) say of it.
    bad = "tune:\n  search_space:\n    method.rnk: {choices: [4, 8]}\n"
    with pytest.raises(ConfigError) as refused:
        load_config("train.yml", text=bad)
    [problem] = refused.value.problems
    page.get_by_label("train.yml", exact=True).fill(bad)
    page.get_by_role("button", name="Import this YAML into the form").click()
    expect(rows).to_have_count(1)
    expect(page.get_by_label("Setting 1", exact=True)).to_have_value("method.rnk")
    expect(page.get_by_label("Choices 1", exact=True)).to_have_value("4, 8")
    expect(page.locator("#ts-0-problem")).to_have_text(problem.message)
    expect(page.get_by_label("Setting 1", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#config-problems li")).to_have_text([str(problem)])

    # The job itself, in the form.
    for key, value in {
        "model.name": str(tiny_llama),
        "data.train": str(work / "data" / "numbers.jsonl"),
        "data.max_seq_length": "64",
        "data.validation_split": "0.25",
        "training.max_steps": "2",
        "training.batch_size": "2",
        "training.eval_every": "1",
        "training.eval_samples": "0",  # no answers to generate at each evaluation: faster
        "tune.trials": "2",
    }.items():
        page.get_by_label(key, exact=True).fill(value)
    page.get_by_label("training.backend", exact=True).select_option("torch")
    page.get_by_label("tune.sampler", exact=True).select_option("random")
    page.get_by_label("logging.tensorboard", exact=True).uncheck()

    # A search space of two rows, built with the keyboard's controls.
    page.get_by_role("button", name="Remove every row").click()
    expect(rows).to_have_count(0)
    page.get_by_role("button", name="Add a setting").click()
    page.get_by_label("Setting 1", exact=True).select_option("training.learning_rate")
    page.get_by_label("Kind 1", exact=True).select_option("log-float")
    page.get_by_label("Low 1", exact=True).fill("1e-4")
    page.get_by_label("High 1", exact=True).fill("1e-5")
    # low above high: tune_space's own message, on the row.
    with pytest.raises(SearchSpaceError) as wrong:
        parse_space({"training.learning_rate": {"low": 1e-4, "high": 1e-5, "log": True}})
    key, message = str(wrong.value).split(": ", 1)
    assert key == "tune.search_space.training.learning_rate"
    expect(page.locator("#ts-0-problem")).to_have_text(message)
    expect(page.locator("#tune-problems li")).to_have_text([str(wrong.value)])
    page.get_by_label("High 1", exact=True).fill("1e-2")
    page.get_by_role("button", name="Add a setting").click()
    page.get_by_label("Setting 2", exact=True).select_option("method.rank")
    page.get_by_label("Kind 2", exact=True).select_option("categorical")
    page.get_by_label("Choices 2", exact=True).fill("4, 8")
    expect(page.locator("#tune-status")).to_have_text(
        "the search space is valid: 2 settings searched; 2 trials, sampler random"
    )
    expect(page.locator("#ts-0-problem")).to_be_hidden()
    expect(page.locator("#config-yaml")).to_have_value(re.compile("search_space"))
    tune = yaml.safe_load(page.locator("#config-yaml").input_value())["tune"]
    assert tune == {
        "trials": 2,
        "sampler": "random",
        "search_space": {
            "training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "method.rank": {"choices": [4, 8]},
        },
    }
    page.locator("#tune-space").scroll_into_view_if_needed()
    page.screenshot(path=shots / "config-search-space.png")

    page.get_by_role("button", name="Start search").click()
    page.wait_for_url(re.compile(r"/tune/job-"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#study-state")).to_contain_text(f"(job {job_id}): completed")
    expect(page.locator("#study-state")).to_contain_text("2 of 2 trials finished")
    trials = page.locator("#trials-table tbody tr")
    expect(trials).to_have_count(2)
    assert [t.get_attribute("data-state") for t in trials.all()] == ["COMPLETE", "COMPLETE"]
    status = server.http.get(f"/api/tune/{job_id}/status").json()
    best = status["study"]["best"]
    assert status["study"]["finished"] == 2 and best["state"] == "COMPLETE"
    marked = page.locator("#trials-table tbody tr.best")
    expect(marked).to_have_count(1)
    expect(marked).to_have_attribute("data-trial", str(best["number"]))
    expect(marked.locator("td").first).to_have_text(f"{best['number']} best")
    expect(page.locator("#trials-metric")).to_have_text("eval_loss (lower is better)")
    expect(page.locator("#study-best")).to_contain_text(f"Best so far: trial {best['number']}")
    values = [t["value"] for t in server.http.get(f"/api/tune/{job_id}/trials").json()["trials"]]
    assert best["value"] == min(values)
    for row in trials.all():
        settings = row.locator("td").nth(3).inner_text()
        assert re.fullmatch(r"training\.learning_rate = [\d.e-]+, method\.rank = [48]", settings)
    page.screenshot(path=shots / "study.png", full_page=True)
    check_keyboard_and_labels(page, f"/tune/{job_id}")
    # The job queue leads to the study's page.
    page.goto(server.url + "/jobs")
    expect(page.get_by_role("link", name=job_id)).to_have_attribute("href", f"/tune/{job_id}")


def test_the_search_space_editor_reads_and_writes_every_kind_of_entry(page, server, shots):
    """A train.yml's search space imported into the rows and exported again unchanged; an edit
    and the default space, as the YAML shows them."""
    import yaml

    expect = playwright_api.expect
    space = {
        "training.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
        "method.rank": {"choices": [8, 16]},
        "method.rslora": {"choices": [False, True]},
        "method.alpha": {"same_as": "method.rank", "times": 2, "when": {"method.rslora": False}},
        "method.target_modules": {"choices": [["q_proj", "v_proj"], "all-linear"]},
        "training.warmup_ratio": {"low": 0.0, "high": 0.1, "step": 0.05},
        "training.gradient_accumulation_steps": {"low": 1, "high": 4, "int": True},
        "training.lr_scheduler": {"choices": ["linear", "cosine"]},
    }
    page.goto(server.url + "/config")
    expect(page.locator("#tune-rows .space-row")).to_have_count(7)
    page.get_by_label("train.yml", exact=True).fill(
        yaml.safe_dump({"tune": {"search_space": space}}, sort_keys=False)
    )
    page.get_by_role("button", name="Import this YAML into the form").click()
    expect(page.locator("#tune-rows .space-row")).to_have_count(len(space))
    label = lambda name: page.get_by_label(name, exact=True)  # noqa: E731
    for name, value in {
        "Setting 1": "training.learning_rate",
        "Kind 1": "log-float",
        "Low 1": "1e-5",
        "High 1": "0.001",
        "Kind 2": "categorical",
        "Choices 2": "8, 16",
        "Choices 3": "false, true",
        "Kind 4": "derived",
        "Same as 4": "method.rank",
        "Times 4": "2",
        "Only when 4": "method.rslora = false",
        "Choices 5": "[q_proj, v_proj], all-linear",
        "Step 6": "0.05",
        "Kind 7": "int",
        "Choices 8": "linear, cosine",
    }.items():
        expect(label(name)).to_have_value(value)
    status = page.locator("#tune-status")
    expect(status).to_have_text(
        "the search space is valid: 7 settings searched, 1 derived; 10 trials, sampler tpe"
    )
    exported = lambda: yaml.safe_load(page.locator("#config-yaml").input_value() or "{}")  # noqa: E731
    assert exported() == {"tune": {"search_space": space}}
    assert list(exported()["tune"]["search_space"]) == list(space)  # drawn in this order
    # An edit: the YAML follows.
    label("Choices 2").fill("8, 16, 32")
    expect(page.locator("#config-yaml")).to_have_value(re.compile(r"- 32"))
    assert exported()["tune"]["search_space"]["method.rank"] == {"choices": [8, 16, 32]}
    # A new row takes the keyboard's focus; the default space leaves train.yml's search_space out.
    page.get_by_role("button", name="Add a setting").click()
    assert page.evaluate("document.activeElement.id") == "ts-8-key"
    page.get_by_role("button", name="Use ft's default space").click()
    expect(page.locator("#tune-space-note")).to_contain_text("ft's default LoRA space")
    expect(status).to_have_text(
        "ft's default space is valid: 6 settings searched, 1 derived; 10 trials, sampler tpe"
    )
    assert "search_space" not in page.locator("#config-yaml").input_value()


# --- dataset editor -------------------------------------------------------------------------


def test_upload_preview_edit_and_save_a_version(page, server, work, tiny_llama, shots):
    expect = playwright_api.expect
    page.goto(server.url + "/datasets")
    model = page.get_by_label("Model (its tokenizer and chat template)")
    expect(model).to_have_value(str(tiny_llama))  # remembered in the browser
    page.get_by_label("Dataset file").set_input_files(str(work / "data" / "numbers.jsonl"))
    page.get_by_role("button", name="Upload").click()
    result = page.locator("#ds-upload-result")
    expect(result).to_contain_text("Saved as numbers-")
    name = re.search(r"Saved as (\S+):", result.inner_text())[1]
    # The preview: template applied, the answer's tokens marked as trained.
    first = page.locator("#ds-preview .sample").first
    expect(first).to_contain_text("Say the number 0.")
    trained = "".join(first.locator("mark.trained").all_inner_texts())
    assert "The number is 0." in trained
    assert "Say the number" not in trained
    page.screenshot(path=shots / "dataset-preview.png")
    # Edit the first row, delete the second, save a version.
    row0 = page.get_by_label("Row 1", exact=True)
    row0.fill(json.dumps({**ROWS[0], "output": "Zero."}))
    page.locator("#ds-row-1-del").check()
    page.get_by_role("button", name="Save as a new version").click()
    expect(page.locator("#ds-save-result")).to_contain_text(f"{name} is kept")
    saved = re.search(r"Saved (\S+):", page.locator("#ds-save-result").inner_text())[1]
    assert saved.startswith("numbers-v2-")
    rows = server.http.get(f"/api/datasets/{saved}/rows", params={"limit": 100}).json()
    assert [r["row"] for r in rows["rows"]] == [{**ROWS[0], "output": "Zero."}, *ROWS[2:]]
    old = server.http.get(f"/api/datasets/{name}/rows", params={"limit": 100}).json()
    assert [r["row"] for r in old["rows"]] == ROWS
    expect(page.get_by_label("Dataset", exact=True)).to_have_value(saved)
    # The quality report of the new version.
    page.get_by_role("button", name="Build the quality report").click()
    quality = page.locator("#ds-quality")
    expect(quality).to_contain_text("Duplicates")
    expect(quality.get_by_role("img", name=re.compile("tokens per row histogram"))).to_be_visible()
    assert "null" not in quality.inner_text()
    page.screenshot(path=shots / "dataset-saved.png", full_page=True)


# --- models ---------------------------------------------------------------------------------


def test_search_the_hub_and_pull_with_progress(page, server, hub_env, shots):
    expect = playwright_api.expect
    page.goto(server.url + "/models")
    page.get_by_label("Search", exact=True).fill("tiny-llama")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#m-hubt tbody")).to_contain_text("ft-test/tiny-llama")
    page.get_by_role("button", name="Pull ft-test/tiny-llama").click()
    item = page.locator('#m-pulls li[data-pull="ft-test/tiny-llama"]')
    expect(item.locator("progress")).to_be_attached()
    expect(item).to_have_attribute("data-done", "1")
    expect(item).to_contain_text("done: ft-test/tiny-llama")
    # Now in the local cache.
    expect(page.locator("#m-local tbody")).to_contain_text("ft-test/tiny-llama")
    page.screenshot(path=shots / "models.png", full_page=True)


# --- keyboard and labels --------------------------------------------------------------------

PAGES = ["/", "/jobs", "/models", "/datasets", "/config", "/exports", "/runs", "/chat"]
UNNAMED = re.compile(
    r"^\s*- (textbox|combobox|checkbox|button|searchbox|spinbutton|link)(\s*\[[^\]]*\])?:?\s*$",
    re.M,
)


def check_keyboard_and_labels(page: Any, path: str) -> int:
    """On the page as it is: every control has an accessible name, every input a label, and
    Tab reaches every visible control. Returns how many controls there are."""
    # Every control has an accessible name (the accessibility tree names it).
    tree = page.locator("body").aria_snapshot()
    assert not UNNAMED.search(tree), (path, UNNAMED.search(tree)[0])
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
           .filter(e => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label'))
           .map(e => e.id || e.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == [], (path, unlabelled)
    # Tab through the page: every visible control gets the focus.
    controls = page.evaluate(
        """() => { let n = 0; const all = [...document.querySelectorAll(
             'a[href], button, input, select, textarea, summary, [tabindex="0"]')]
             .filter(e => !e.disabled && e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden');
           all.forEach(e => e.dataset.kb = String(n++)); return n; }"""
    )
    page.evaluate(
        """() => { window.kbReached = [];
           document.addEventListener('focusin', (e) => window.kbReached.push(e.target.dataset.kb));
           document.activeElement && document.activeElement.blur(); }"""
    )
    for _ in range(controls + 3):
        page.keyboard.press("Tab")
    reached = {kb for kb in page.evaluate("window.kbReached") if kb is not None}
    missing = page.evaluate(
        "(reached) => [...document.querySelectorAll('[data-kb]')]"
        ".filter(e => !reached.includes(e.dataset.kb)).map(e => e.outerHTML.slice(0, 90))",
        sorted(reached),
    )
    assert missing == [], (path, missing)
    return controls


def test_keyboard_reaches_every_control_and_every_input_has_a_label(page, server, shots):
    for path in PAGES:
        page.goto(server.url + path)
        page.wait_for_load_state("networkidle")
        if path == "/config":  # the search space editor's rows (ft's default space) are there
            expect = playwright_api.expect
            expect(page.locator("#tune-rows .space-row")).to_have_count(7)
            assert page.get_by_label("Only when 4", exact=True).input_value() == (
                "method.rslora = false"
            )
        check_keyboard_and_labels(page, path)
        name = "home" if path == "/" else path.strip("/")
        page.screenshot(path=shots / f"keyboard-{name}.png")


# --- a failed job ---------------------------------------------------------------------------


def test_a_failed_job_shows_its_log_and_can_be_retried(browser, work, shots):
    """A server whose queue is paused (max_concurrent_trainings 0), so the retried job stays
    queued; the failed job is written into its store as a worker would leave it."""
    from ft_config.paths import app_paths
    from ft_config.secrets import Secret
    from ft_server import ServerSettings

    expect = playwright_api.expect
    settings = ServerSettings(
        api_key=Secret(KEY),
        paths=app_paths({"FT_HOME": str(work / "paused-home")}),
        max_concurrent_trainings=0,
    )
    paused = Server(settings)
    try:
        jobs = paused.app.state.jobs
        jobs.store.create_job("job-failed1", "train", {"config": "train.yml"})
        jobs.store.update_job("job-failed1", status="failed", error="DataError: row 3: no text")
        folder = jobs.job_dir("job-failed1")
        folder.mkdir(parents=True)
        lines = [f"line {i}" for i in range(60)] + ["Traceback (most recent call last):", "boom"]
        (folder / "job.log").write_text("\n".join(lines) + "\n")
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(f"localStorage.setItem('ft_api_key', {json.dumps(KEY)})")
        page = context.new_page()
        page.goto(paused.url + "/jobs")
        row = page.locator('#jobs-table tr[data-job="job-failed1"]')
        expect(row).to_contain_text("failed")
        # The failed job's last 40 lines and its error open by themselves.
        log = page.locator("#log-text")
        expect(log).to_contain_text("boom")
        expect(log).to_contain_text("DataError: row 3: no text")
        assert log.inner_text().splitlines()[0] == "line 22"
        expect(page.locator("#log-error")).to_have_text("Error: DataError: row 3: no text")
        page.screenshot(path=shots / "jobs-failed.png")
        row.get_by_role("button", name="Retry").click()
        expect(row).to_contain_text("queued")
        expect(row.get_by_role("button", name="Cancel")).to_be_visible()
        assert jobs.store.get_job("job-failed1").status == "queued"
        context.close()
    finally:
        paused.stop()
