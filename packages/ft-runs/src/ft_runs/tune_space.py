"""The search space of `ft tune`: `tune.search_space` read into parameters, each trial's
settings drawn from them, and those settings as `--set` overrides of the project's train.yml.

An entry is keyed by a setting's dotted name and takes one of these shapes:

| shape | what the trial gets |
| --- | --- |
| `{low: 3e-5, high: 5e-4, log: true}` | a float in the range (log-uniform with `log`); `step` makes it discrete |
| `{low: 1, high: 8, int: true}` | an integer in the range |
| `{choices: [8, 16, 32]}` | one of the values (lists allowed: `[[q_proj, v_proj], all-linear]`) |
| `{same_as: method.rank, times: 2}` | derived, not searched: another parameter's value times `times` |

Any entry may add `when: {setting: value}`: it is drawn only when the named (earlier) parameter
took that value; otherwise the setting keeps its train.yml value. Parameters are drawn in the
order written, so a condition names one above it.

An empty `search_space` is `DEFAULT_SPACE`, which follows what published LoRA studies found
matters: the learning rate first (log-uniform 3e-5..5e-4), the rank in {8, 16, 32, 64} with
alpha = 2r (or rank-stabilised scaling), attention-only or all-linear targets, dropout, warmup.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ft_config.structure import structure_config, unstructure_config

if TYPE_CHECKING:
    from ft_config import TrainConfig

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    # Biderman et al. 2024 ("LoRA learns less and forgets less") and the QLoRA/Unsloth sweeps:
    # the learning rate matters most, and LoRA wants a higher one than full fine-tuning.
    "training.learning_rate": {"low": 3e-5, "high": 5e-4, "log": True},
    "method.rank": {"choices": [8, 16, 32, 64]},
    # Kalajdzievski 2023 (rsLoRA): alpha/sqrt(r) keeps the update's scale as r grows; the
    # common rule otherwise is alpha = 2r.
    "method.rslora": {"choices": [False, True]},
    "method.alpha": {"same_as": "method.rank", "times": 2, "when": {"method.rslora": False}},
    # Hu et al. 2021 adapted attention only; QLoRA (Dettmers et al. 2023) found every linear
    # layer needed to match full fine-tuning.
    "method.target_modules": {"choices": [ATTENTION, "all-linear"]},
    "method.dropout": {"choices": [0.0, 0.05, 0.1]},
    "training.warmup_ratio": {"choices": [0.0, 0.03, 0.1]},
}


MAX_GRID_VALUES = 10_000
"""Values one setting may have under `sampler: grid`: more is a typo (a range without its
step), and listing them would take the memory of the process checking the space."""


class SearchSpaceError(ValueError):
    """`tune.search_space` has an entry ft cannot use; the message names it and what to write:
    `KEY: PROBLEM`, KEY the entry's place under `tune.search_space` (`key`, `problem`)."""

    @property
    def key(self) -> str:
        """Where the problem is: `tune.search_space.SETTING[...]`, or the space itself."""
        head, _, rest = str(self).partition(": ")
        return head if rest and head.startswith("tune.search_space") else "tune.search_space"

    @property
    def problem(self) -> str:
        """The message without its key."""
        head, _, rest = str(self).partition(": ")
        return rest if rest and head.startswith("tune.search_space") else str(self)


@attrs.frozen
class Parameter:
    """One entry of the search space."""

    name: str
    kind: str  # "float", "int", "choice", "derived"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    same_as: str | None = None
    times: float = 1.0
    when: tuple[tuple[str, Any], ...] = ()

    def active(self, drawn: Mapping[str, Any]) -> bool:
        return all(name in drawn and drawn[name] == value for name, value in self.when)

    def grid_values(self) -> list[Any]:
        """Every value of the parameter, for the grid sampler."""
        if self.kind == "choice":
            return [_label(c) for c in self.choices]
        assert self.low is not None and self.high is not None
        if self.step is None and self.kind != "int":
            raise SearchSpaceError(
                f"tune.search_space.{self.name}: a range needs `step` (or `choices`) for "
                "`sampler: grid`, which tries every value"
            )
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if count > MAX_GRID_VALUES:
            raise SearchSpaceError(
                f"tune.search_space.{self.name}: {count:,} values are too many for "
                f"`sampler: grid` (at most {MAX_GRID_VALUES:,} a setting); give a larger "
                "`step` or `choices`"
            )
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else values


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` (no dot) as text: a value that reads as a number is one."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _label(choice: Any) -> Any:
    """Optuna's categorical values are scalars: a list choice is stored as its JSON text."""
    return json.dumps(choice) if isinstance(choice, list | dict) else choice


def _unlabel(value: Any, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if _label(choice) == value:
            return choice
    return value


_KEYS = {"low", "high", "log", "step", "int", "choices", "same_as", "times", "when"}


def parse_space(space: Mapping[str, Mapping[str, Any]] | None) -> list[Parameter]:
    """The parameters of `tune.search_space` (the default LoRA space when it is empty), in the
    order written. Raises SearchSpaceError for an entry ft cannot use."""
    space = space or DEFAULT_SPACE
    parameters: list[Parameter] = []
    seen: set[str] = set()
    for name, entry in space.items():
        where = f"tune.search_space.{name}"
        if not isinstance(entry, Mapping):
            raise SearchSpaceError(
                f"{where}: expected a mapping such as {{low: 1e-5, high: 1e-3, log: true}} or "
                f"{{choices: [8, 16]}}, got {entry!r}"
            )
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise SearchSpaceError(
                f"{where}: unknown key {unknown[0]!r}; an entry takes {', '.join(sorted(_KEYS))}"
            )
        when = entry.get("when") or {}
        if not isinstance(when, Mapping):
            raise SearchSpaceError(f"{where}.when: expected {{setting: value}}, got {when!r}")
        for other in when:
            if other not in seen:
                raise SearchSpaceError(
                    f"{where}.when: {other!r} is not a parameter above this one; a condition "
                    "names a parameter drawn earlier"
                )
        conditions = tuple((str(k), v) for k, v in when.items())
        if "same_as" in entry:
            if entry["same_as"] not in seen:
                raise SearchSpaceError(
                    f"{where}.same_as: {entry['same_as']!r} is not a parameter above this one"
                )
            parameters.append(
                Parameter(
                    name,
                    "derived",
                    same_as=str(entry["same_as"]),
                    times=float(entry.get("times", 1.0)),
                    when=conditions,
                )
            )
        elif "choices" in entry:
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices:
                raise SearchSpaceError(f"{where}.choices: expected a non-empty list")
            choices = [_number(c) for c in choices]
            parameters.append(Parameter(name, "choice", choices=tuple(choices), when=conditions))
        elif "low" in entry and "high" in entry:
            low, high = _number(entry["low"]), _number(entry["high"])
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
                raise SearchSpaceError(f"{where}: `low` and `high` must be numbers")
            if low >= high:
                raise SearchSpaceError(f"{where}: `low` ({low}) must be below `high` ({high})")
            log = bool(entry.get("log", False))
            if log and low <= 0:
                raise SearchSpaceError(f"{where}: `log: true` needs `low` above 0, got {low}")
            kind = "int" if entry.get("int") else "float"
            step = _number(entry.get("step"))
            if step is not None and (
                not isinstance(step, int | float) or isinstance(step, bool) or step <= 0
            ):
                raise SearchSpaceError(f"{where}.step: expected a number above 0, got {step!r}")
            parameters.append(
                Parameter(name, kind, low=low, high=high, log=log, step=step, when=conditions)
            )
        else:
            raise SearchSpaceError(
                f"{where}: give a range ({{low: ..., high: ...}}), `choices: [...]` or "
                "`same_as: <parameter>`"
            )
        seen.add(name)
    return parameters


def suggest(trial: Any, parameters: list[Parameter]) -> dict[str, Any]:
    """Draw a trial's settings (an optuna Trial); derived and inactive ones included or left
    out as their conditions say. Returns {dotted setting: value}."""
    drawn: dict[str, Any] = {}
    for p in parameters:
        if not p.active(drawn):
            continue
        if p.kind == "derived":
            base = drawn.get(p.same_as or "")
            if base is None:
                continue
            value = base * p.times
            drawn[p.name] = int(value) if float(value).is_integer() else value
        elif p.kind == "choice":
            label = trial.suggest_categorical(p.name, [_label(c) for c in p.choices])
            drawn[p.name] = _unlabel(label, p.choices)
        elif p.kind == "int":
            drawn[p.name] = trial.suggest_int(
                p.name, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.log
            )
        else:
            drawn[p.name] = trial.suggest_float(
                p.name, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
            )
    return drawn


def grid(parameters: list[Parameter]) -> dict[str, list[Any]]:
    """The grid sampler's space: every searched parameter's values. Conditional parameters
    cannot be gridded (a combination would name values that are never drawn)."""
    space = {}
    for p in parameters:
        if p.kind == "derived":
            continue
        if p.when:
            raise SearchSpaceError(
                f"tune.search_space.{p.name}: `sampler: grid` tries every combination and "
                "cannot skip a conditional parameter; drop its `when`, or use `sampler: tpe`"
            )
        space[p.name] = p.grid_values()
    return space


def grid_size(parameters: list[Parameter]) -> int:
    return math.prod(len(v) for v in grid(parameters).values())


def check_space(config: TrainConfig) -> list[Parameter]:
    """Everything a study checks before it starts (`ft tune`, POST /api/tune/start, the
    dashboard's live check): the space parses, `sampler: grid` can enumerate it, and every
    value it can draw is one its setting takes, judged by train.yml's own checks. Returns the
    parameters; raises SearchSpaceError naming the entry."""
    parameters = parse_space(config.tune.search_space)
    if config.tune.sampler == "grid":
        grid(parameters)
    base = unstructure_config(config)
    for p in parameters:
        for where, value in _drawable(p):
            problem = _refused(base, p.name, value)
            if problem is None:
                continue
            entry = f"tune.search_space.{p.name}"
            if where == "fraction":
                raise SearchSpaceError(
                    f"{entry}: the range draws fractions such as {value}, which {p.name} "
                    f"refuses ({problem}); add `int: true` or give `choices`"
                )
            raise SearchSpaceError(f"{entry}.{where}: {_yaml(value)}: {problem}")
    return parameters


def _drawable(p: Parameter) -> list[tuple[str, Any]]:
    """Values a parameter can draw that stand for all the others: each choice, a range's ends
    and (for a float range) a value between them that is no whole number."""
    if p.kind == "choice":
        return [("choices", c) for c in p.choices]
    if p.kind in ("float", "int"):
        assert p.low is not None and p.high is not None
        ends: list[tuple[str, Any]] = [("low", p.low), ("high", p.high)]
        whole = all(float(v).is_integer() for v in (p.low, p.high))
        if p.kind == "float" and p.step is None and whole:
            # A whole-numbered float range may be meant for a whole-number setting.
            ends.append(("fraction", round(p.low + (p.high - p.low) / math.pi, 2)))
        return ends
    return []


def _refused(base: dict[str, Any], name: str, value: Any) -> str | None:
    """train.yml's own message for `name: value` (the first), or None when it is accepted."""
    path = name.split(".")
    data = copy.deepcopy(base)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    _, problems = structure_config(data)
    for key, message in problems:
        if [str(k) for k in key[: len(path)]] == path:
            return message
    return None


def overrides(settings: Mapping[str, Any]) -> list[str]:
    """A trial's settings as `--set` overrides (`ft train --set ...` reproduces it)."""
    return [f"{name}={_yaml(value)}" for name, value in settings.items()]


def _yaml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)
