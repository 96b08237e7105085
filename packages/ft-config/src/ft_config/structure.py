"""Turn plain data into the attrs classes of the schema with cattrs, collecting every problem.

cattrs does the structuring; the hooks here make it strict in the way a config file needs (no
string silently split into a list, no `yes` accepted as a number) and make its messages readable
(`expected a number, got 'fast'`). Problems come back as (key path, message) pairs so the loader
can point at the file and line each one came from.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from ft_config.schema import TrainConfig

KeyPath = tuple[str | int, ...]
Problem = tuple[KeyPath, str]

# Unknown keys named one by one (with a suggestion each) per mapping; the rest are counted.
MAX_UNKNOWN_KEYS = 20


class NestedProblems(ValueError):
    """Problems found inside a list or mapping value, by path relative to that value."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def show(value: Any) -> str:
    """A short description of a value for an error message."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def describe(tp: Any) -> str:
    """What a type expects, in words: `a number`, `one of 'a', 'b'`."""
    if tp is float:
        return "a number"
    if tp is int:
        return "a whole number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is Any:
        return "any value"
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(map(repr, choices))
    if origin in (list, typing.List):  # noqa: UP006
        return f"a list of {_plural(describe(get_args(tp)[0]))}"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "a mapping"
    if _is_union(tp):
        return " or ".join(describe(a) for a in get_args(tp) if a is not type(None))
    if attrs.has(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(words: str) -> str:
    for single, plural in (
        ("a number", "numbers"),
        ("a whole number", "whole numbers"),
        ("a string", "strings"),
    ):
        if words == single:
            return plural
    return words


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _shape(obj: Any) -> str:
    """`list`, `mapping` or `scalar`, for a value or a type."""
    if isinstance(obj, list) or get_origin(obj) is list:
        return "list"
    if (
        isinstance(obj, dict)
        or get_origin(obj) is dict
        or (isinstance(obj, type) and attrs.has(obj))
    ):
        return "mapping"
    return "scalar"


def _structure_float(value: Any, _: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        # YAML 1.1 (PyYAML) reads `2e-4` as a string: accept numbers written that way.
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {show(value)}") from None
    else:
        raise ValueError(f"expected a number, got {show(value)}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {show(value)}")
    return number


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float | str) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number.is_integer():
            return int(number)
    raise ValueError(f"expected a whole number, got {show(value)}")


def _structure_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # `revision: 1234` or `name: 7` mean the text
    raise ValueError(f"expected a string, got {show(value)}")


def _structure_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {show(value)}")


def _structure_literal(value: Any, tp: Any) -> Any:
    choices = get_args(tp)
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    message = f"expected one of {', '.join(repr(c) for c in choices)}, got {show(value)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    raise ValueError(message)


def make_converter() -> cattrs.Converter:
    """The strict converter used for train.yml and profiles."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_literal)

    def structure_union(value: Any, tp: Any) -> Any:
        members = get_args(tp)
        if value is None:
            if type(None) in members:
                return None
            raise ValueError(f"expected {describe(tp)}, got {show(value)}")
        candidates = [m for m in members if m is not type(None)]
        # When the value's shape picks one member (a list for `str | list[str]`), structure
        # with it directly so problems inside the value are reported item by item.
        shaped = [m for m in candidates if _shape(m) == _shape(value)]
        if len(candidates) == 1 or (len(shaped) == 1 and _shape(value) != "scalar"):
            return converter.structure(value, (shaped or candidates)[0])
        for member in candidates:
            try:
                return converter.structure(value, member)
            except (ValueError, TypeError, BaseValidationError):
                continue
        raise ValueError(f"expected {describe(tp)}, got {show(value)}")

    converter.register_structure_hook_func(_is_union, structure_union)

    def structure_list(value: Any, tp: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"expected {describe(tp)}, got {show(value)}")
        (item_type,) = get_args(tp) or (Any,)
        items, problems = [], []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as exc:
                problems.extend(((index, *p), m) for p, m in collect_problems(exc))
        if problems:
            raise NestedProblems(problems)
        return items

    converter.register_structure_hook_func(lambda t: get_origin(t) is list, structure_list)

    def structure_dict(value: Any, tp: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {show(value)}")
        _, value_type = get_args(tp) or (str, Any)
        result, problems = {}, []
        for key, item in value.items():
            try:
                result[str(key)] = converter.structure(item, value_type)
            except Exception as exc:
                problems.extend(((str(key), *p), m) for p, m in collect_problems(exc))
        if problems:
            raise NestedProblems(problems)
        return result

    converter.register_structure_hook_func(lambda t: get_origin(t) is dict, structure_dict)

    def attrs_hook_factory(cl: type) -> Callable[[Any, Any], Any]:
        inner = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True)

        def structure_section(value: Any, tp: Any) -> Any:
            if value is None:
                value = {}  # `training:` with nothing under it means the defaults
            if not isinstance(value, dict):
                raise ValueError(f"expected a mapping of settings, got {show(value)}")
            return inner(value, tp)

        return structure_section

    converter.register_structure_hook_factory(attrs.has, attrs_hook_factory)
    return converter


def collect_problems(exc: BaseException, path: KeyPath = ()) -> list[Problem]:
    """Flatten a cattrs validation error (or one of ours) into (path, message) pairs."""
    if isinstance(exc, BaseValidationError):
        problems: list[Problem] = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, note.index)
            problems.extend(collect_problems(sub, sub_path))
        return problems
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        problems = [
            ((*path, key), unknown_key_message(exc.cl, path, key))
            for key in extra[:MAX_UNKNOWN_KEYS]
        ]
        if len(extra) > MAX_UNKNOWN_KEYS:  # thousands of them: this is not a config file
            where = ".".join(str(p) for p in path) or "the top level"
            problems.append(
                (
                    (*path, extra[MAX_UNKNOWN_KEYS]),
                    f"and {len(extra) - MAX_UNKNOWN_KEYS:,} more unknown keys in {where}",
                )
            )
        return problems
    if isinstance(exc, NestedProblems):
        return [((*path, *p), m) for p, m in exc.problems]
    return [(path, str(exc) or type(exc).__name__)]


def unknown_key_message(cl: type, path: KeyPath, key: str) -> str:
    """`unknown key` with the closest real key, here or in another section."""
    names = [f.name for f in attrs.fields(cl)]
    if any(word in key.lower() for word in ("token", "password", "api_key", "secret")):
        return "unknown key; secrets belong in passwords.yml (see `ft secrets`), never in train.yml"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    where = ".".join(str(p) for p in path) or "the top level"
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    # Right name, wrong section: `method.learning_rate` -> `training.learning_rate`.
    for dotted in _setting_paths():
        if dotted.rsplit(".", 1)[-1] == key:
            return f"unknown key in {where} (did you mean {dotted!r}?)"
    return f"unknown key; {where} has: {', '.join(names)}"


def all_setting_paths() -> list[str]:
    """Every setting as a dotted path, `model.name` to `tune.pruning`."""
    return list(_setting_paths())


@functools.cache
def _setting_paths() -> tuple[str, ...]:
    # Computed once: a file with thousands of unknown keys asks for it once per key.
    paths = [f.name for f in attrs.fields(TrainConfig) if not attrs.has(f.type)]
    for section in attrs.fields(TrainConfig):
        if attrs.has(section.type):
            paths += [f"{section.name}.{f.name}" for f in attrs.fields(section.type)]
    return tuple(paths)


def iter_settings(obj: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, attrs.Attribute, Any]]:
    """Every leaf setting of a config object with its field and value."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if attrs.has(field.type):
            yield from iter_settings(value, (*path, field.name))
        else:
            yield (*path, field.name), field, value


def check_bounds(config: TrainConfig) -> list[Problem]:
    """The checks types cannot express: bounds and patterns from field metadata, and rules that
    tie settings together."""
    problems: list[Problem] = []
    for path, field, value in iter_settings(config):
        meta = field.metadata
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, int | float) and not isinstance(item, bool):
                low, high = meta.get("min"), meta.get("max")
                if low is not None and (item < low or (meta.get("exclusive_min") and item == low)):
                    relation = "greater than" if meta.get("exclusive_min") else "at least"
                    problems.append((path, f"must be {relation} {low:g}, got {item:g}"))
                if high is not None and item > high:
                    problems.append((path, f"must be at most {high:g}, got {item:g}"))
            if (
                isinstance(item, str)
                and meta.get("pattern")
                and not re.match(meta["pattern"], item)
            ):
                why = meta.get("allowed") or meta["help"]
                problems.append((path, f"{item!r} is not valid here: {why}"))
    if config.data.format == "columns" and not config.data.columns:
        problems.append(
            (
                ("data", "columns"),
                "`format: columns` needs `columns`, e.g. {prompt: question, response: answer}",
            )
        )
    if config.model.task == "sequence-classification" and not config.data.label_column:
        problems.append(
            (
                ("data", "label_column"),
                "`task: sequence-classification` needs the label column's name",
            )
        )
    training = config.training
    if training.batch_size != "auto" and training.tokens_per_step != "auto":
        problems.append(
            (
                ("training", "tokens_per_step"),
                "applies with `batch_size: auto` (ft then splits each step into micro-batches); "
                "with a fixed batch_size a step is batch_size x gradient_accumulation_steps rows",
            )
        )
    if training.batch_size == "auto" and training.gradient_accumulation_steps != 1:
        problems.append(
            (
                ("training", "gradient_accumulation_steps"),
                "`batch_size: auto` picks the accumulation itself: set `tokens_per_step` for "
                "the size of a step, or a fixed batch_size",
            )
        )
    if config.method.name in ("prefix", "p-tuning") and config.model.task != "causal-lm":
        problems.append(
            (("method", "name"), f"{config.method.name!r} works with `task: causal-lm` only")
        )
    if config.method.objective != "sft" and config.model.task != "causal-lm":
        problems.append(
            (
                ("method", "objective"),
                f"{config.method.objective!r} trains causal language models on preference "
                "pairs: set `task: causal-lm`, or `objective: sft`",
            )
        )
    settings = all_setting_paths()
    for key in config.tune.search_space:
        if key not in settings:
            close = difflib.get_close_matches(key, settings, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((("tune", "search_space", key), f"no such setting{hint}"))
    return problems


CONVERTER = make_converter()


def structure_config(data: dict[str, Any]) -> tuple[TrainConfig | None, list[Problem]]:
    """Structure `data` into a TrainConfig; return it (or None) and every problem found."""
    try:
        config = CONVERTER.structure(data, TrainConfig)
    except Exception as exc:
        return None, collect_problems(exc)
    return config, check_bounds(config)


def unstructure_config(config: TrainConfig) -> dict[str, Any]:
    """Plain data for a config, in schema order (for YAML/JSON output and run snapshots)."""
    return CONVERTER.unstructure(config)


def valid_config_line(config: TrainConfig, name: str) -> str:
    """The line `ft config validate` (and the server's validation) prints for a valid config:
    `NAME is valid (profile chat; 7 settings differ from the defaults)`."""
    changed = _count_changes(unstructure_config(config), unstructure_config(TrainConfig()))
    used = f"profile {config.profile}" if config.profile else "no profile"
    return f"{name} is valid ({used}; {changed} settings differ from the defaults)"


def _count_changes(values: dict[str, Any], defaults: dict[str, Any]) -> int:
    count = 0
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict) and key != "columns":
            count += _count_changes(value, defaults[key])
        elif value != defaults.get(key):
            count += 1
    return count
