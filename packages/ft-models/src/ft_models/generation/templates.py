"""Chat templates for message prompts: the tokenizer's own, a registered name (`ft.templates`
entry points: ft-data's built-ins and plugins), a `.jinja` file, or a template object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from ft_config import plugins
from ft_models.generation.options import GenerationError

TEMPLATES_GROUP = "ft.templates"
"""The entry point group chat templates are registered in (ft-data's built-ins and plugins)."""


@attrs.frozen
class PromptTemplate:
    """A Jinja chat template to render messages with (ft-data's `ChatTemplate` has the same
    `name` and `source`, and can be passed as is)."""

    name: str
    source: str


def template_names() -> list[str]:
    """The names of the registered chat templates (`ft.templates` entry points), sorted."""
    return sorted(plugins.discover(TEMPLATES_GROUP))


def load_template(template: str | Path | Any | None) -> PromptTemplate | None:
    """The chat template `template` names: None, "auto" or "tokenizer" -> None (the
    tokenizer's own); a registered name (`chatml`, `llama3`, `mistral`, `alpaca`, or a
    plugin's); the path of a Jinja file; or an object with `name` and `source` (ft-data's
    `ChatTemplate`). Raises GenerationError naming what exists."""
    if template is None or (isinstance(template, str) and template in ("auto", "tokenizer")):
        return None
    if not isinstance(template, str | Path):
        source = getattr(template, "source", None)
        if not isinstance(source, str):
            raise GenerationError(
                f"template must be a name, a .jinja file or a template with a `source`, not "
                f"{type(template).__name__}"
            )
        return PromptTemplate(str(getattr(template, "name", "template")), source)
    name = str(template)
    if name in plugins.discover(TEMPLATES_GROUP):
        try:
            factory = plugins.load(TEMPLATES_GROUP, name)
        except plugins.PluginError as error:
            raise GenerationError(str(error)) from error.__cause__
        return load_template(factory())
    path = Path(template).expanduser()
    if path.is_file():
        return PromptTemplate(path.name, path.read_text(encoding="utf-8"))
    names = ", ".join(["tokenizer", *template_names()])
    raise GenerationError(
        f"unknown chat template {name!r}: choose one of {names}, or give a .jinja file"
    )


__all__ = ["TEMPLATES_GROUP", "PromptTemplate", "load_template", "template_names"]
