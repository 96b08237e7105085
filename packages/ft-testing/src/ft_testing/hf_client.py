"""Point the huggingface_hub client at another endpoint and another cache, in this process and in
the subprocesses it starts.

Environment variables alone are not enough: huggingface_hub reads `HF_ENDPOINT`, `HF_HOME` and
friends into `huggingface_hub.constants` when it is first imported, its module-level `HfApi`
(behind `huggingface_hub.list_models` and co.) keeps the endpoint it was created with, and
transformers caches one `HfApi` of its own. So each function here sets the environment (for
subprocesses) and patches those copies in place (for this process), all through a
`pytest.MonkeyPatch`, which puts everything back when it is undone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

# Variables that would take the client away from the test's endpoint, cache or credentials.
_ENDPOINT_OVERRIDES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING")
_CACHE_OVERRIDES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE")
_CACHE_OVERRIDES += ("HF_TOKEN_PATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE")


def use_hf_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Send every huggingface_hub request of this process and its children to `endpoint`.

    Imports huggingface_hub (it must be installed) so that undoing `monkeypatch` restores the
    values it had before, rather than leaving the test's endpoint in a module imported mid-test.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    endpoint = endpoint.rstrip("/")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for name in _ENDPOINT_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    _set_existing(monkeypatch, constants, ENDPOINT=endpoint, HF_HUB_OFFLINE=False)
    _set_existing(
        monkeypatch,
        constants,
        HUGGINGFACE_CO_URL_TEMPLATE=endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        HF_URL_HOSTS=frozenset(getattr(constants, "HF_URL_HOSTS", frozenset()))
        | {urlsplit(endpoint).hostname or ""},
    )
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        # transformers builds its shared HfApi on first use; dropping it makes the next use
        # build one for this endpoint.
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


def use_hf_home(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """Make `hf_home` the Hugging Face home (hub cache, token, xet cache) of this process and its
    children, with no token and no telemetry.

    Patches `huggingface_hub.constants` only if huggingface_hub is already imported: a later
    import reads the environment set here.
    """
    monkeypatch.setenv("HF_HOME", str(hf_home))
    for name in _CACHE_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return
    home = Path(hf_home)
    hub_cache, assets_cache, xet_cache = str(home / "hub"), str(home / "assets"), str(home / "xet")
    _set_existing(
        monkeypatch,
        constants,
        HF_HOME=str(home),
        default_cache_path=hub_cache,
        HUGGINGFACE_HUB_CACHE=hub_cache,
        HF_HUB_CACHE=hub_cache,
        default_assets_cache_path=assets_cache,
        HUGGINGFACE_ASSETS_CACHE=assets_cache,
        HF_ASSETS_CACHE=assets_cache,
        HF_TOKEN_PATH=str(home / "token"),
        HF_STORED_TOKENS_PATH=str(home / "stored_tokens"),
        default_xet_cache_path=xet_cache,
        HF_XET_CACHE=xet_cache,
        CHECK_FOR_UPDATE_DONE_PATH=str(home / ".check_for_update_done"),
        CHECK_FOR_SKILL_UPDATE_DONE_PATH=str(home / ".check_for_skill_update_done"),
        AGENT_HARNESSES_PATH=str(home / ".agent_harnesses.json"),
        HF_HUB_DISABLE_TELEMETRY=True,
    )
    # Modules that copied a constant by name when they were imported.
    for module_name, values in (
        ("huggingface_hub.utils._cache_manager", {"HF_HUB_CACHE": hub_cache}),
        ("huggingface_hub.utils._cache_assets", {"HF_ASSETS_CACHE": assets_cache}),
    ):
        module = sys.modules.get(module_name)
        if module is not None:
            _set_existing(monkeypatch, module, **values)


def _set_existing(monkeypatch: pytest.MonkeyPatch, module: ModuleType, **values: Any) -> None:
    # Only names the installed version has: another huggingface_hub version may lack some.
    for name, value in values.items():
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)
