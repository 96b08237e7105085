"""ft_models.cached: the models on this machine (the Hub cache itself: test_models_cmd)."""

from __future__ import annotations

import json

from ft_config import app_paths
from ft_models.cached import cached_models
from ft_models.hub import hub_cache_dir


def test_nothing_cached_yet() -> None:
    assert cached_models() == {
        "hub_cache": str(hub_cache_dir()),
        "hub": [],
        "gguf_folder": str(app_paths().models / "gguf"),
        "gguf": [],
    }


def test_imported_gguf_files_are_listed_by_their_record() -> None:
    root = app_paths().models / "gguf"
    done = root / "tiny-0123456789ab"
    done.mkdir(parents=True)
    record = {
        "source": {"path": "/models/tiny.gguf"},
        "dtype": "bfloat16",
        "files": {"model.safetensors": 1000, "tokenizer.json": 24},
    }
    (done / "ft-import.json").write_text(json.dumps(record), encoding="utf-8")
    (root / "unfinished").mkdir()  # no record: an import that did not complete
    (root / ".tiny-tmp").mkdir()
    broken = root / "broken"
    broken.mkdir()
    (broken / "ft-import.json").write_text("{", encoding="utf-8")
    assert cached_models()["gguf"] == [
        {
            "name": "tiny-0123456789ab",
            "path": str(done),
            "source": "/models/tiny.gguf",
            "dtype": "bfloat16",
            "size": 1024,
        }
    ]
