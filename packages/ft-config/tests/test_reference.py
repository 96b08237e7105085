"""What is generated from the schema: JSON Schema, the docs reference, ft init's train.yml."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from ft_config import TrainConfig, json_schema, load_config, markdown_reference, render_train_yml
from ft_config.profiles import BUILTIN
from ft_config.structure import all_setting_paths

DOCS = Path(__file__).resolve().parents[3] / "docs" / "config-reference.md"


def test_every_setting_has_help_and_a_working_default():
    for section in attrs.fields(TrainConfig):
        fields = attrs.fields(section.type) if attrs.has(section.type) else [section]
        for field in fields:
            assert len(field.metadata.get("help", "")) > 15, field.name
    assert load_config() == TrainConfig()


def test_json_schema_covers_every_setting():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    covered = []
    for name, prop in schema["properties"].items():
        body = prop["anyOf"][0] if "anyOf" in prop and "properties" in prop["anyOf"][0] else prop
        if "properties" in body:
            covered += [f"{name}.{key}" for key in body["properties"]]
            assert body["additionalProperties"] is False
        else:
            covered.append(name)
    assert sorted(covered) == sorted(all_setting_paths())
    rate = schema["properties"]["training"]["properties"]["learning_rate"]
    assert rate == {
        "description": "Peak learning rate.",
        "type": "number",
        "default": 2e-4,
        "exclusiveMinimum": 0.0,
    }
    assert schema["properties"]["training"]["properties"]["lr_scheduler"]["enum"] == [
        "constant",
        "linear",
        "cosine",
    ]


def test_docs_reference_is_up_to_date():
    assert DOCS.read_text(encoding="utf-8") == markdown_reference(), "run `just docs`"


@pytest.mark.parametrize("profile", BUILTIN)
def test_init_template_loads_back_to_the_profile(profile):
    text = render_train_yml(profile)
    assert load_config(text=text) == load_config(profile=profile)
    assert text.count("# ") > 10  # commented
