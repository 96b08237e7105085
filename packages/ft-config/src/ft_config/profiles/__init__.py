"""Profiles: named sets of defaults a train.yml starts from (`profile: chat`).

The built-in ones are the YAML files beside this module. A user adds their own as
`<app configs>/profiles/NAME.yml` (see `ft doctor` for the folder), or names a YAML file by path.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import attrs

from ft_config.paths import app_paths

BUILTIN = ("chat", "instruction", "code", "domain")


class ProfileNotFound(LookupError):
    """No profile of that name, with the names that exist."""


@attrs.frozen
class FoundProfile:
    name: str
    path: Path
    display: str  # how errors name it
    builtin: bool


def builtin_path(name: str) -> Path:
    """The file of a built-in profile."""
    return Path(str(resources.files(__package__).joinpath(f"{name}.yml")))


def user_profiles_dir() -> Path:
    return app_paths().configs / "profiles"


def available() -> dict[str, FoundProfile]:
    """Every profile by name: the built-ins, then the user's (which may shadow a built-in)."""
    found = {
        name: FoundProfile(
            name, builtin_path(name), f"profile {name!r} ({builtin_path(name)})", True
        )
        for name in BUILTIN
    }
    folder = user_profiles_dir()
    if folder.is_dir():
        for file in sorted(folder.glob("*.yml")):
            found[file.stem] = FoundProfile(file.stem, file, str(file), False)
    return found


def find_profile(name: str, base_dir: Path) -> FoundProfile:
    """Resolve a profile name, or a path to a YAML file (relative to `base_dir`)."""
    if name.endswith((".yml", ".yaml")) or "/" in name:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ProfileNotFound(f"no profile file {str(path)!r}")
        return FoundProfile(path.stem, path, str(path), False)
    profiles = available()
    if name in profiles:
        return profiles[name]
    close = difflib.get_close_matches(name, list(profiles), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ProfileNotFound(f"no profile {name!r}; {hint}profiles: {', '.join(profiles)}")


def describe(name: str) -> str:
    """The first comment line of a profile file: what it is for."""
    path = available()[name].path
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
