"""Every setting of train.yml's schema is read somewhere: a setting that `ft config validate`
accepts and nothing reads is a promise the tool does not keep."""

from __future__ import annotations

import re
from pathlib import Path

from ft_config.structure import all_setting_paths

ROOT = Path(__file__).resolve().parents[1]
# Where the schema itself, its reference and its loader name every setting.
DEFINITIONS = {"schema.py", "reference.py", "structure.py", "loader.py", "yamlfile.py"}
# Read by name through a generic path rather than as an attribute (each says where).
READ_ELSEWHERE = {
    "tune.search_space": "checked against the settings by ft_config.structure.check_bounds",
}


def _sources() -> str:
    texts = []
    for path in [*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("apps/*/src/**/*.py")]:
        if path.parent.name == "ft_config" and path.name in DEFINITIONS:
            continue
        texts.append(path.read_text(encoding="utf-8"))
    return "\n".join(texts)


def test_every_setting_is_read_somewhere() -> None:
    code = _sources()
    unread = []
    for dotted in all_setting_paths():
        name = dotted.rsplit(".", 1)[-1]
        if dotted in READ_ELSEWHERE:
            continue
        if not re.search(rf"\.{re.escape(name)}\b", code):
            unread.append(dotted)
    assert unread == [], f"settings nothing reads: {unread}"


def test_the_check_has_teeth() -> None:
    assert not re.search(r"\.no_such_setting_anywhere\b", _sources())
