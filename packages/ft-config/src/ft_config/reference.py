"""Everything generated from the schema's help texts: JSON Schema for editors, the Markdown
config reference in docs/, and the commented train.yml that `ft init` writes."""

from __future__ import annotations

import json
import textwrap
import types
import typing
from typing import Any, Literal, get_args, get_origin

import attrs

from ft_config import profiles
from ft_config.loader import load_config
from ft_config.schema import TrainConfig
from ft_config.structure import unstructure_config
from ft_config.yamlfile import dump_yaml

SCHEMA_ID = "https://github.com/ft-project/ft/schemas/train.schema.json"


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _type_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(get_args(tp)[1])}
    if origin in (typing.Union, types.UnionType):
        members = [_type_schema(m) for m in get_args(tp) if m is not type(None)]
        if type(None) in get_args(tp):
            members.append({"type": "null"})
        return {"anyOf": members}
    if attrs.has(tp):
        return _class_schema(tp)
    raise TypeError(f"no JSON Schema for {tp!r}")


def _class_schema(cls: type) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for field in attrs.fields(cls):
        prop = _type_schema(field.type)
        meta = field.metadata
        prop = {"description": _one_line(meta.get("help") or ""), **prop}
        if not attrs.has(field.type):
            default = (
                field.default.factory()
                if isinstance(field.default, attrs.Factory)
                else field.default
            )  # type: ignore[attr-defined]
            prop["default"] = default
            if meta.get("min") is not None:
                prop["exclusiveMinimum" if meta.get("exclusive_min") else "minimum"] = meta["min"]
            if meta.get("max") is not None:
                prop["maximum"] = meta["max"]
            if meta.get("pattern"):
                prop["pattern"] = meta["pattern"]
            if meta.get("example") is not None:
                prop["examples"] = [meta["example"]]
        properties[field.name] = prop
    return {
        "type": "object",
        "description": _one_line(cls.__doc__ or ""),
        "properties": properties,
        "additionalProperties": False,
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of train.yml, for editors and other tools."""
    schema = _class_schema(TrainConfig)
    # The shorthands `model: NAME` and `method: lora` are valid too.
    for section in ("model", "method"):
        name_schema = schema["properties"][section]["properties"]["name"]
        schema["properties"][section] = {
            "description": schema["properties"][section]["description"],
            "anyOf": [
                schema["properties"][section],
                {k: v for k, v in name_schema.items() if k != "default"},
            ],
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ft train.yml",
        **schema,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if attrs.has(tp):
        return "mapping (" + ", ".join(f"`{f.name}`" for f in attrs.fields(tp)) + ")"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


def markdown_reference() -> str:
    """docs/config-reference.md: every setting with its type, default and help."""
    out = [
        "# train.yml reference",
        "",
        "<!-- Generated from the schema in packages/ft-config by `just docs`; do not edit. -->",
        "",
        "Every setting has a default, so a train.yml only needs what differs. Precedence, highest",
        "first: `--set KEY=VALUE` on the command line, the file, its `profile`, these defaults.",
        "`model: NAME` and `method: NAME` are short for `model: {name: NAME}` and",
        "`method: {name: NAME}`. Relative paths are relative to the train.yml's folder.",
        "",
        "JSON Schema for editors: `ft config schema > train.schema.json`.",
        "",
    ]
    for field in attrs.fields(TrainConfig):
        if not attrs.has(field.type):
            out += [f"## `{field.name}`", "", _one_line(field.metadata["help"]), ""]
            out += [
                f"Type: {_type_name(field.type)}. Default: `{_yaml_inline(field.default)}`.",
                "",
            ]
            continue
        cls = field.type
        out += [f"## `{field.name}`", "", _one_line(cls.__doc__ or ""), ""]
        out += ["| setting | type | default | what it does |", "| --- | --- | --- | --- |"]
        for sub in attrs.fields(cls):
            default = (
                sub.default.factory() if isinstance(sub.default, attrs.Factory) else sub.default
            )  # type: ignore[attr-defined]
            bounds = _bounds(sub.metadata)
            help_text = _one_line(sub.metadata["help"]).replace("|", "\\|") + bounds
            out.append(
                f"| `{field.name}.{sub.name}` | {_type_name(sub.type)} | `{_yaml_inline(default)}` | {help_text} |"
            )
        out.append("")
    out += ["## Profiles", ""]
    for name in profiles.BUILTIN:
        out += [f"- `{name}`: {profiles.describe(name)}"]
    out.append("")
    return "\n".join(out)


def _bounds(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('exclusive_min') else '≥'} {meta['min']:g}")
    if meta.get("max") is not None:
        parts.append(f"≤ {meta['max']:g}")
    return f" ({', '.join(parts)})" if parts else ""


def _yaml_inline(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def render_train_yml(profile: str | None = "chat", *, schema_path: str | None = None) -> str:
    """A commented train.yml for `ft init`: the settings people change most, with their help,
    set to the profile's values; everything else comes from the profile and the defaults."""
    config = load_config(profile=profile) if profile else TrainConfig()
    values = unstructure_config(config)
    lines = []
    if schema_path:
        lines.append(f"# yaml-language-server: $schema={schema_path}")
    lines += [
        "# An ft training job. `ft train` runs it; `ft config show` prints every setting in force",
        "# (profile and defaults included); `ft config validate` checks it. Each setting is",
        "# explained in docs/config-reference.md. Secrets go in passwords.yml, never here.",
        "",
    ]
    for field in attrs.fields(TrainConfig):
        if not attrs.has(field.type):
            if field.metadata.get("init") and values.get(field.name) is not None:
                lines += _comment(field.metadata["help"], "")
                lines.append(f"{field.name}: {_scalar(values[field.name])}")
                lines.append("")
            continue
        chosen = [f for f in attrs.fields(field.type) if f.metadata.get("init")]
        if not chosen:
            continue
        lines.append(f"{field.name}:")
        for sub in chosen:
            lines += _comment(sub.metadata["help"], "  ")
            lines.append(f"  {sub.name}: {_scalar(values[field.name][sub.name])}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        _one_line(text), width=96, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# "
    )


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, float) and (abs(value) < 1e-3 and value != 0):
        return f"{value:.1e}"  # 2.0e-04 stays a number in YAML 1.1 (it needs the dot)
    text = dump_yaml(value).removesuffix("\n...\n").strip()
    return text
