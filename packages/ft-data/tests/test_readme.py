"""The README's example runs (with the test tokenizer and the real Alpaca file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(
    datasets: Path,
    tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL).group(1)  # type: ignore[union-attr]
    code = re.sub(r'^model = ".*?"', f"model = {str(tokenizer_dir)!r}", code, flags=re.MULTILINE)
    code = re.sub(
        r'^data = ".*?"',
        f"data = {str(datasets / 'alpaca_en_demo.json')!r}",
        code,
        flags=re.MULTILINE,
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})  # noqa: S102 (our own README)
    assert (
        "detected: alpaca (keys 'instruction'/'output' in 999/999 rows); 999 rows ->"
        in capsys.readouterr().out
    )
    assert (tmp_path / "prepared" / "alpaca.h5").is_file()
