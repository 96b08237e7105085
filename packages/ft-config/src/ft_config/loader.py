"""Load a train.yml: defaults, then a profile, then the file, then `--set` overrides.

Settings precedence lives here and only here: command line over file over profile over the
schema's defaults. Every value remembers where it came from, so an error says
`train.yml:14: training.learning_rate: expected a number, got 'fast'` or
`--set training.epochs=lots: ...` or names the profile file that set it.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ft_config import profiles
from ft_config.schema import TrainConfig
from ft_config.structure import KeyPath, Problem, all_setting_paths, structure_config
from ft_config.yamlfile import YamlError, read_yaml, read_yaml_file

# Sections that accept a bare value as shorthand for their main setting.
SHORTHANDS = {"model": "name", "method": "name"}


@attrs.frozen
class ConfigProblem:
    """One thing wrong with a config: where (`train.yml:14`), which key, and what."""

    location: str
    key: str
    message: str

    def __str__(self) -> str:
        parts = [p for p in (self.location, self.key) if p]
        return ": ".join([*parts, self.message])


class ConfigError(Exception):
    """A config that cannot be used. `str()` lists every problem, one per line."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@attrs.frozen
class Override:
    """A `--set KEY=VALUE` from the command line, value already parsed as YAML."""

    raw: str
    path: KeyPath
    value: Any


def parse_override(text: str) -> Override:
    """Parse `training.learning_rate=2e-4`. The value is read as YAML, so `[q_proj, v_proj]`,
    `true` and `null` mean a list, a boolean and nothing."""
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            [ConfigProblem(f"--set {text}", "", "expected KEY=VALUE, e.g. --set training.epochs=2")]
        )
    try:  # read as a file is: safe, and with the same budget for aliases
        value = read_yaml(raw_value, f"--set {text}")[0] if raw_value.strip() else None
    except YamlError:
        value = raw_value  # not YAML (or an alias bomb): take the text as it is
    # Collections must be written in brackets (`[a, b]`, `{k: v}`); `Answer: briefly` is text.
    if isinstance(value, dict | list) and not raw_value.lstrip().startswith(("{", "[")):
        value = raw_value
    return Override(raw=text, path=tuple(key.split(".")), value=value)


class _Sources:
    """Where each value of the merged config came from, by key path."""

    def __init__(self) -> None:
        # path -> (order of recording, location). A later source replacing a value also replaces
        # what was recorded beneath it: `locate` takes the most recent record among a path's
        # prefixes, so nothing has to be searched and deleted (linear in the number of keys).
        self._where: dict[KeyPath, tuple[int, str]] = {}
        self._count = 0

    def record(self, path: KeyPath, location: str) -> None:
        self._count += 1
        self._where[path] = (self._count, location)

    def record_file(
        self, data: Any, lines: dict[KeyPath, int], source: str, prefix: KeyPath = ()
    ) -> None:
        for path, line in sorted(lines.items(), key=lambda item: len(item[0])):
            self.record((*prefix, *path), f"{source}:{line}")

    def locate(self, path: KeyPath) -> str:
        found = [
            self._where[path[:end]] for end in range(len(path) + 1) if path[:end] in self._where
        ]
        return max(found)[1] if found else ""


def _normalise(data: Any, source: str, lines: dict[KeyPath, int]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                ConfigProblem(
                    f"{source}:1",
                    "",
                    "expected a mapping of sections (model:, data:, training:, ...)",
                )
            ]
        )
    data = {str(k): v for k, v in data.items()}
    for section, main in SHORTHANDS.items():
        value = data.get(section)
        if value is not None and not isinstance(value, dict | list):
            data[section] = {main: value}
            if (section,) in lines:
                lines[(section, main)] = lines[(section,)]
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; anything else in `update` replaces what `base` had."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else child
            node[key] = child
        if not isinstance(child, dict):
            return  # the structuring step reports the type mismatch
        node = child
    node[path[-1]] = value


def load_config(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    overrides: Iterable[str | Override] = (),
    profile: str | None = None,
) -> TrainConfig:
    """Load a training job's config.

    `path` is a train.yml (or None for the defaults); `text` parses a string instead, named
    `path` or `<text>` in errors. `profile` replaces the file's `profile:`; `overrides` are
    `--set` strings applied last. Relative paths inside stay relative: resolve them against
    the file's folder with `resolve_path`. Raises ConfigError listing every problem found.
    """
    sources = _Sources()
    source = str(path) if path is not None else "<text>"
    try:
        if text is not None:
            raw, lines = read_yaml(text, source)
        elif path is not None:
            raw, lines = read_yaml_file(Path(path), source)
        else:
            raw, lines = None, {}
    except YamlError as exc:
        raise ConfigError([ConfigProblem(_where(exc), "", exc.message)]) from None
    user = _normalise(raw, source, lines)
    sources.record_file(user, lines, source)

    parsed = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    problems: list[ConfigProblem] = []

    # The profile may come from the file, `--profile`, or `--set profile=...` (last wins).
    chosen = user.get("profile")
    chosen_at = sources.locate(("profile",))
    if profile is not None:
        chosen, chosen_at = profile, "--profile"
    for override in parsed:
        if override.path == ("profile",):
            chosen, chosen_at = override.value, f"--set {override.raw}"

    merged: dict[str, Any] = {}
    if chosen is not None:
        if not isinstance(chosen, str):
            problems.append(
                ConfigProblem(chosen_at, "profile", f"expected a profile name, got {chosen!r}")
            )
        else:
            base_dir = Path(path).parent if path is not None else Path.cwd()
            try:
                found = profiles.find_profile(chosen, base_dir)
                profile_data, profile_lines = read_yaml_file(found.path, found.display)
            except profiles.ProfileNotFound as exc:
                problems.append(ConfigProblem(chosen_at, "profile", str(exc)))
            except YamlError as exc:
                problems.append(ConfigProblem(_where(exc), "", exc.message))
            else:
                profile_data = _normalise(profile_data, found.display, profile_lines)
                if "profile" in profile_data:
                    problems.append(
                        ConfigProblem(
                            found.display, "profile", "a profile cannot name another profile"
                        )
                    )
                    profile_data.pop("profile")
                merged = profile_data
                sources = _Sources()
                sources.record_file(profile_data, profile_lines, found.display)
                sources.record_file(user, lines, source)
    merged = _merge(merged, user)

    for override in parsed:
        key_path = override.path
        if (
            len(key_path) == 1
            and key_path[0] in SHORTHANDS
            and not isinstance(override.value, dict)
        ):
            key_path = (key_path[0], SHORTHANDS[key_path[0]])  # `--set method=dora`
        sources.record(key_path, f"--set {override.raw}")
        _set_path(merged, key_path, override.value)
    if chosen is not None:
        merged["profile"] = chosen

    config, found_problems = structure_config(merged)
    problems += [_problem(sources, p) for p in found_problems]
    problems.sort(key=_reading_order)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


def _problem(sources: _Sources, problem: Problem) -> ConfigProblem:
    path, message = problem
    return ConfigProblem(sources.locate(path), dotted(path), message)


def _reading_order(problem: ConfigProblem) -> tuple[int, str, int]:
    # File problems first, by file then line; `--set` problems after, in command-line order.
    name, _, line = problem.location.rpartition(":")
    if problem.location.startswith("--") or not line.isdigit():
        return (1, "", 0)
    return (0, name, int(line))


def _where(exc: YamlError) -> str:
    return f"{exc.source}:{exc.line}" if exc.line else exc.source


def dotted(path: KeyPath) -> str:
    """`('method', 'target_modules', 1)` -> `method.target_modules[1]`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def resolve_path(config_path: str | Path | None, value: str) -> str:
    """A path setting from train.yml made absolute against the file's folder; URLs and globs
    with a scheme are returned unchanged."""
    if "://" in value:
        return value
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or config_path is None:
        return str(candidate)
    return str(Path(config_path).resolve().parent / candidate)


def suggest_setting(key: str) -> str | None:
    """The closest real dotted setting to `key`, for CLI messages."""
    close = difflib.get_close_matches(key, all_setting_paths(), n=1, cutoff=0.6)
    return close[0] if close else None
