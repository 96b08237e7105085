"""The README's example runs as written and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_example_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 (our own README)
    out = capsys.readouterr().out.splitlines()
    reason, step, rest = out[0].split(" ", 2)
    assert (reason, step) == ("max_steps", "10")
    first, last = (float(x) for x in re.findall(r"\d+\.\d+", rest))
    assert last < first
    assert out[1] == "['adapter_config.json', 'adapter_model.safetensors', 'ft_adapter.json']"
    assert namespace["adapted"].model.layers[0].self_attn.q_proj.lora_a.shape == (64, 8)
