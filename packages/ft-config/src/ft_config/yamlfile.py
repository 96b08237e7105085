"""Safe YAML reading that remembers where every key was written.

PyYAML's safe loader alone loses line numbers and silently keeps the last of two equal keys;
ft needs both (errors name the line; a duplicated key is a mistake the user must see). So the
document is composed into nodes first, walked for lines and duplicates, then constructed with the
safe constructor, which refuses `!!python/...` tags.

Aliases (`*name`) have a budget: a few hundred bytes of nested aliases can stand for billions of
values (the "billion laughs" document), and every step after parsing walks the expanded tree. A
document whose aliases add more than ALIAS_BUDGET values is refused at the alias that crosses it,
before anything is composed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

try:  # The C loader is several times faster; fall back where libyaml is missing.
    _SafeLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _SafeLoader = yaml.SafeLoader

KeyPath = tuple[str | int, ...]

# Values that aliases may add to a document, all aliases together. A config that repeats a
# section or two through anchors stays far below it; an alias bomb crosses it within a few lines.
ALIAS_BUDGET = 10_000
_STR_TAG = "tag:yaml.org,2002:str"


class YamlError(Exception):
    """A YAML file that cannot be read. `str()` is `FILE:LINE: what is wrong`."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


def read_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse `text` safely; return the data and the 1-based line of every key and list item.

    `source` is the name errors use (usually the file path as the user typed it).
    """
    loader = _SafeLoader(text)
    try:
        if "*" in text:  # only a document that has aliases can expand through them
            _check_alias_budget(text, source)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[KeyPath, int] = {}
        _walk(node, (), lines, source)
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        tag = getattr(exc, "problem", "") or ""
        if "python/" in tag or "python/" in str(exc):
            message = (
                f"refusing the YAML tag in this line ({_tag_of(exc)}): ft reads YAML safely and "
                "never builds Python objects from a file. Write plain values instead."
            )
        else:
            message = f"unsupported YAML: {exc.problem}"
        raise YamlError(source, mark.line + 1 if mark else None, message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise YamlError(
            source, mark.line + 1 if mark else None, f"this is not valid YAML: {problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(source, None, f"this is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def read_yaml_file(path: Path, source: str | None = None) -> tuple[Any, dict[KeyPath, int]]:
    """Read and parse a YAML file (see `read_yaml`); a missing or non-UTF-8 file is a YamlError."""
    name = source or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlError(name, None, "no such file") from None
    except IsADirectoryError:
        raise YamlError(name, None, "this is a folder, not a YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlError(
            name, line, "this line is not valid UTF-8; save the file as UTF-8"
        ) from None
    return read_yaml(text, name)


def _check_alias_budget(text: str, source: str) -> None:
    """Refuse a document whose aliases would expand into more than ALIAS_BUDGET values.

    One pass over the parser's events, linear in the text: the size of every anchored value is
    counted once when it ends, and each alias adds that size to the running total.
    """
    loader = _SafeLoader(text)
    try:
        sizes: dict[str, int] = {}
        stack: list[list[Any]] = []  # [anchor, values inside so far] per open collection
        added = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([event.anchor, 1])
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                anchor, size = None, sizes.get(event.anchor, 1)
                added += size
                if added > ALIAS_BUDGET:
                    raise YamlError(
                        source,
                        event.start_mark.line + 1,
                        f"the alias *{event.anchor} here takes the document past {ALIAS_BUDGET:,} "
                        "values repeated through aliases; ft refuses documents that expand this "
                        "much (an alias bomb). Write the values out, or use fewer nested aliases.",
                    )
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            if stack:
                stack[-1][1] += size
    finally:
        loader.dispose()


def _tag_of(exc: yaml.constructor.ConstructorError) -> str:
    text = str(exc.problem or "")
    start = text.find("'")
    end = text.rfind("'")
    tag = text[start + 1 : end] if 0 <= start < end else text
    return tag.replace("tag:yaml.org,2002:", "!!")


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`
                _walk(value_node, path, lines, source)
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                # `~:`, `true:`, `1.5:` or `[a, b]:` would become null, a boolean, a number or
                # a list, which no setting is named; and errors could not point back at them.
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "..."
                raise YamlError(
                    source,
                    line,
                    f"the key {shown or '(empty)'!r} is not a name; keys are text: write a name, "
                    'in quotes if it looks like a number or true/false ("1":)',
                )
            key = key_node.value
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                raise YamlError(
                    source,
                    line,
                    f"{dotted}: this key is written twice (first on line {seen[key]}); "
                    "YAML would silently keep only the last one. Remove one of them.",
                )
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, source)


def dump_yaml(data: Any) -> str:
    """YAML text for plain data, keys in the given order, readable block style."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
