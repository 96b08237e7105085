import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ft_testing import plugin
from ft_testing.plugin import TinyModelFactory

pytest_plugins = ["pytester"]


def test_every_test_gets_its_own_ft_home(ft_home: Path, tmp_path: Path) -> None:
    assert ft_home == tmp_path / "ft_home"
    assert os.environ["FT_HOME"] == str(ft_home)
    hf_home = Path(os.environ["HF_HOME"])
    assert hf_home.name.startswith("hf_home")
    assert not hf_home.is_relative_to(Path.home() / ".cache")
    assert "HF_TOKEN" not in os.environ
    assert (os.environ["HF_HUB_DISABLE_TELEMETRY"], os.environ["DO_NOT_TRACK"]) == ("1", "1")


def test_huggingface_hub_constants_follow_hf_home() -> None:
    constants = pytest.importorskip("huggingface_hub.constants")

    # Imported during this session, the constants follow the session's HF_HOME either way.
    hf_home = Path(os.environ["HF_HOME"])
    assert Path(constants.HF_HUB_CACHE) == hf_home / "hub"
    assert Path(constants.HF_TOKEN_PATH) == hf_home / "token"


def test_the_plugin_imports_without_torch() -> None:
    heavy = (
        "torch",
        "transformers",
        "huggingface_hub",
        "tokenizers",
        "mlx",
        "ft_train_core",
        "ft_data",
    )
    code = f"import sys, ft_testing.plugin; print(sorted(m for m in {heavy!r} if m in sys.modules))"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_tiny_llama_is_built_once(tiny_model_factory: TinyModelFactory, tiny_llama: Path) -> None:
    assert tiny_model_factory("llama") == tiny_llama
    assert (tiny_llama / "model.safetensors").is_file()


def test_smollm2_gguf(smollm2_gguf: Path) -> None:
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with smollm2_gguf.open("rb") as file:
        assert file.read(4) == b"GGUF"


def test_gpu_skip_reason_matches_cuda() -> None:
    torch = pytest.importorskip("torch")

    reason = plugin._gpu_skip_reason()

    if torch.cuda.is_available():
        assert reason is None
    else:
        assert (
            reason == "needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False here"
        )


def test_mlx_metal_skip_reason() -> None:
    reason = plugin._mlx_metal_skip_reason()

    if sys.platform != "darwin" or platform.machine() != "arm64":
        assert (
            reason
            == f"needs MLX with Metal on Apple Silicon, and this is {sys.platform} {platform.machine()}"
        )


def test_hardware_markers_skip_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin, "_gpu_skip_reason", lambda: "no GPU in this test")
    monkeypatch.setattr(plugin, "_mlx_metal_skip_reason", lambda: None)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_on_gpu():
            pass

        @pytest.mark.mlx_metal
        def test_on_metal():
            pass

        def test_anywhere():
            pass
        """
    )

    result = pytester.runpytest_inprocess("-rs", "--strict-markers", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: no GPU in this test"])


def test_unmarked_runs_never_look_for_hardware(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> str:
        raise AssertionError("looked for hardware without a marked test")

    monkeypatch.setattr(plugin, "_gpu_skip_reason", fail)
    monkeypatch.setattr(plugin, "_mlx_metal_skip_reason", fail)
    pytester.makepyfile("def test_anywhere():\n    pass\n")

    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
