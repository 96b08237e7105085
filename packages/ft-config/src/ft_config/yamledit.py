"""Set values in a YAML file's text, keeping everything else as the user wrote it.

`ft tune promote` writes the best trial's settings into the project's train.yml. Loading the
file and dumping it again would drop every comment, the key order the user chose and their
quoting; a train.yml is a document people read and commit. So each value is set by editing
the text where PyYAML's composer says the value is:

- a key that exists: its scalar is replaced in place (a comment after it stays);
- a key missing from a block mapping: a line `key: value` is added after the mapping's last
  line, at the indentation of its keys (missing parents are added as nested blocks);
- a list or mapping value: written in flow style (`[q_proj, v_proj]`) on its key's line;
- a parent written as a scalar shorthand (`method: lora` when `method.rank` is set): it becomes
  a block with the shorthand as `name` (`method: {name: lora}` is what it means).

A key missing from a flow mapping (`training: {epochs: 2}`) is added before its closing brace.
What cannot be edited this way (a document that is not a mapping, a number where a mapping is
needed) raises `CannotEdit`; the caller then writes the data whole.
`set_values` checks its result: the edited text must load to exactly the data asked for.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ft_config.yamlfile import _SafeLoader, read_yaml


class CannotEdit(Exception):
    """The text cannot be edited in place for this key; the message says why."""


def edited(data: Any, values: dict[str, Any]) -> Any:
    """A copy of the loaded document `data` with each dotted key of `values` set (a string
    where a mapping is needed becomes `{name: string}`: `method: lora` means that)."""
    data = copy.deepcopy(data) if data is not None else {}
    for dotted, value in values.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {"name": node[part]} if isinstance(node.get(part), str) else {}
            node = node[part]
        node[leaf] = value
    return data


def set_values(text: str, values: dict[str, Any], source: str) -> str:
    """`text` with each dotted key of `values` set, comments and layout kept. The result must
    load to `edited(loaded text, values)`; anything else raises CannotEdit, as does a key
    that cannot be set in place."""
    expected = edited(read_yaml(text, source)[0], values)
    for dotted, value in values.items():
        text = set_value(text, dotted.split("."), value)
    if read_yaml(text, source)[0] != expected:
        raise CannotEdit("the edited text does not load to the values asked for")
    return text


def set_value(text: str, keys: list[str], value: Any) -> str:
    """`text` with the value at `keys` (nested mapping keys) set to `value`."""
    root = yaml.compose(text, Loader=_SafeLoader)
    if root is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + _block(keys, value, 0)
    node: yaml.Node = root
    key_node: yaml.Node | None = None
    depth = 0
    while depth < len(keys):
        if not isinstance(node, yaml.MappingNode):
            break
        found = next(
            (
                (k, v)
                for k, v in node.value
                if isinstance(k, yaml.ScalarNode) and k.value == keys[depth]
            ),
            None,
        )
        if found is None:
            if node.flow_style:
                return _insert_flow(text, node, keys[depth:], value)
            return _insert(text, node, keys[depth:], value, at_end=node is root)
        key_node, node = found
        depth += 1
    if depth == len(keys):
        if not isinstance(node, yaml.ScalarNode) or _is_collection(value):
            return _replace_value(text, key_node, node, value)
        return _put(text, node, value)
    # A scalar where a mapping is needed: `method: lora` -> `method:\n  name: lora\n  rank: 8`.
    shorthand = (
        isinstance(node, yaml.ScalarNode)
        and key_node is not None
        and node.tag == "tag:yaml.org,2002:str"
        and node.value
    )
    if not shorthand:
        raise CannotEdit(f"{'.'.join(keys[:depth])} is not a mapping")
    indent = key_node.start_mark.column + 2
    block = _block(["name"], node.value, indent) + _block(keys[depth:], value, indent)
    after = _line_end(text, node.end_mark.index)
    comment = text[node.end_mark.index : after].rstrip("\n")  # stays on the key's line
    return text[: key_node.end_mark.index] + ":" + comment + "\n" + block + text[after:]


def _replace_value(text: str, key_node: yaml.Node | None, node: yaml.Node, value: Any) -> str:
    """A value that is (or was) a list or mapping. A scalar or flow collection is replaced in
    place; a block collection's lines give way to the value in flow style on the key's line
    (a comment on that line stays; those inside the old block go with it)."""
    if key_node is None:
        raise CannotEdit("the document itself cannot be replaced")
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        return _put(text, node, value)
    key_line_end = _line_end(text, key_node.end_mark.index)
    comment = text[key_node.end_mark.index : key_line_end].rstrip("\n")
    comment = "  " + comment[comment.index("#") :] if "#" in comment else ""
    after = _line_end(text, _last_scalar_end(node))
    return text[: key_node.end_mark.index] + ": " + _scalar(value) + comment + "\n" + text[after:]


def _put(text: str, node: yaml.Node, value: Any) -> str:
    """`text` with `node`'s span replaced by `value`; an empty value (`key:`) gets a space."""
    start, end = node.start_mark.index, node.end_mark.index
    rendered = _scalar(value)
    if start == end and start > 0 and text[start - 1] == ":":
        rendered = " " + rendered
    return text[:start] + rendered + text[end:]


def _insert(text: str, mapping: yaml.MappingNode, keys: list[str], value: Any, at_end: bool) -> str:
    """`keys: value` added as the last entry of the block `mapping`: after its last line, or
    for the document's own mapping (`at_end`) at the end of the file."""
    if not mapping.value:
        raise CannotEdit("an empty mapping has no indentation to follow")
    indent = mapping.value[0][0].start_mark.column
    position = len(text) if at_end else _line_end(text, _last_scalar_end(mapping))
    prefix = text[:position]
    if prefix and not prefix.endswith("\n"):
        prefix += "\n"
    return prefix + _block(keys, value, indent) + text[position:]


def _insert_flow(text: str, mapping: yaml.MappingNode, keys: list[str], value: Any) -> str:
    """`key: value` added before the closing brace of the flow `mapping` (`{a: 1}`)."""
    for key in reversed(keys[1:]):
        value = {key: value}
    brace = text.rfind("}", mapping.start_mark.index, mapping.end_mark.index)
    if brace < 0:
        raise CannotEdit("the flow mapping's closing brace was not found")
    entry = f"{_key(keys[0])}: {_scalar(value)}"
    before = text[:brace].rstrip()
    separator = "" if before.endswith("{") else ", "
    return before + separator + entry + text[len(before) : brace].replace("\n", "") + text[brace:]


def _last_scalar_end(node: yaml.Node) -> int:
    """Where the last scalar under `node` ends in the text (a collection's own end mark can lie
    past comments and blank lines that belong to what follows)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node.end_mark.index


def _line_end(text: str, index: int) -> int:
    """The start of the line after the one `index` is on (block scalars end at a line start)."""
    if index > 0 and text[index - 1] == "\n":
        return index
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _block(keys: list[str], value: Any, indent: int) -> str:
    lines = []
    for depth, key in enumerate(keys[:-1]):
        lines.append(" " * (indent + 2 * depth) + f"{_key(key)}:")
    lines.append(" " * (indent + 2 * (len(keys) - 1)) + f"{_key(keys[-1])}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return _scalar(key)


def _scalar(value: Any) -> str:
    """One-line YAML for `value` (flow style for lists and mappings)."""
    text = yaml.safe_dump(
        value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=10**6
    )
    return text.removesuffix("\n...\n").strip()


def _is_collection(value: Any) -> bool:
    return isinstance(value, list | tuple | dict)
