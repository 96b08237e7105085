"""ft sends no telemetry, and asks the libraries it uses not to send theirs.

huggingface_hub (and transformers, through it) reports library versions and usage to the Hub
unless `HF_HUB_DISABLE_TELEMETRY` or `DO_NOT_TRACK` is set; older transformers read
`DISABLE_TELEMETRY`. ft's entry points call `switch_off_telemetry()` before anything loads a
model, and child processes (torchrun, mlx.launch workers) inherit the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

TELEMETRY_OFF: dict[str, str] = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "DISABLE_TELEMETRY": "1",
}
"""The environment variables that turn the libraries' telemetry off."""


def switch_off_telemetry(environ: MutableMapping[str, str] | None = None) -> None:
    """Set `TELEMETRY_OFF` in `environ` (default: this process's environment), and tell an
    already imported huggingface_hub, which reads the variable once, at import."""
    env = os.environ if environ is None else environ
    env.update(TELEMETRY_OFF)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and environ is None:
        constants.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]
