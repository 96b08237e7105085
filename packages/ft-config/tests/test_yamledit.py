"""Values set in a train.yml's text, as `ft tune promote` sets them: the user's comments, key
order and layout stay, and the file loads to exactly the values asked for."""

from __future__ import annotations

import itertools

import pytest

from ft_config.yamledit import CannotEdit, edited, set_value, set_values
from ft_config.yamlfile import read_yaml

TRAIN_YML = """\
# My job: a persona on the small model.
model: smollm2-135m   # the embedded one
data:
  train: data/persona.jsonl
  max_seq_length: 128
method: lora  # cheap
training:
  learning_rate: 1.0e-3  # tuned by hand
  warmup_steps:
  target_modules:
    - q_proj
    - v_proj   # v too

  # the run's length
  epochs: 2
"""


def test_values_are_set_in_place_and_the_comments_stay() -> None:
    values = {
        "training.learning_rate": 0.0003,
        "method.rank": 16,
        "method.target_modules": "all-linear",
        "training.warmup_steps": 5,
        "training.target_modules": ["q_proj", "k_proj"],
        "data.packing": False,
        "output.run_name": "best trial",
    }
    expected = edited(read_yaml(TRAIN_YML, "t")[0], values)
    text = set_values(TRAIN_YML, values, "train.yml")
    assert (
        text
        == """\
# My job: a persona on the small model.
model: smollm2-135m   # the embedded one
data:
  train: data/persona.jsonl
  max_seq_length: 128
  packing: false
method:  # cheap
  name: lora
  rank: 16
  target_modules: all-linear
training:
  learning_rate: 0.0003  # tuned by hand
  warmup_steps: 5
  target_modules: [q_proj, k_proj]

  # the run's length
  epochs: 2
output:
  run_name: best trial
"""
    )
    assert read_yaml(text, "t")[0] == expected


def test_strings_that_read_as_other_types_are_quoted() -> None:
    text = set_value("a:\n  b: x\n", ["a", "b"], "yes")
    assert text == "a:\n  b: 'yes'\n"
    assert read_yaml(text, "t")[0] == {"a": {"b": "yes"}}
    assert set_value("a:\n  b: x\n", ["a", "c"], None) == "a:\n  b: x\n  c: null\n"


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("- a\n- b\n", ["training", "epochs"]),  # not a mapping
        ("training: 3\n", ["training", "epochs"]),  # a number where a mapping is needed
    ],
)
def test_what_cannot_be_edited_in_place_says_so(text: str, keys: list[str]) -> None:
    with pytest.raises(CannotEdit):
        set_value(text, keys, 1)


def test_flow_mappings_are_edited_in_place() -> None:
    text = "training: {epochs: 2, seed: 0}  # short\nmethod: {}\n"
    text = set_value(text, ["training", "epochs"], 3)
    text = set_value(text, ["training", "learning_rate"], 0.001)
    text = set_value(text, ["training", "extra", "deep"], [1, 2])
    text = set_value(text, ["method", "rank"], 8)
    assert text == (
        "training: {epochs: 3, seed: 0, learning_rate: 0.001, extra: {deep: [1, 2]}}  # short\n"
        "method: {rank: 8}\n"
    )


def test_a_result_that_loads_to_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from ft_config import yamledit

    monkeypatch.setattr(yamledit, "set_value", lambda text, keys, value: "a: 3\n")
    with pytest.raises(CannotEdit, match="does not load to the values asked for"):
        set_values("a: 1\n", {"a": 2}, "t")


def test_the_plain_edit_reads_a_scalar_as_a_name() -> None:
    data = {"method": "lora", "training": {"epochs": 1}}
    assert edited(data, {"method.rank": 8, "data.packing": False}) == {
        "method": {"name": "lora", "rank": 8},
        "training": {"epochs": 1},
        "data": {"packing": False},
    }
    assert data == {"method": "lora", "training": {"epochs": 1}}  # a copy


DEMO_YML = """\
# Written by `ft demo`: a LoRA fine-tune of the embedded model.
model: smollm2-135m
data:
  train: data/persona.jsonl
  packing: true
method:
  name: lora
  rank: 16
  # alpha 2r
  alpha: 32
  target_modules: [q_proj, k_proj, v_proj, o_proj]
training:
  epochs: 3
  learning_rate: 1.0e-3
resources:
  device: cpu
"""


def test_every_setting_of_the_default_search_space_on_a_demo_train_yml() -> None:
    """Each combination of what `ft tune`'s default space sets, on a train.yml like `ft
    demo`'s: the edited text loads to the plain edit, and every comment line is still there."""
    source = DEMO_YML
    loaded = read_yaml(source, "t")[0]
    comments = [line for line in source.splitlines() if line.lstrip().startswith("#")]
    choices = {
        "training.learning_rate": [3.1e-5, 0.00042],
        "method.rank": [8, 64],
        "method.rslora": [False, True],
        "method.alpha": [16],
        "method.target_modules": [["q_proj", "v_proj"], "all-linear"],
        "method.dropout": [0.0, 0.1],
        "training.warmup_ratio": [0.03],
    }
    for combination in itertools.product(*choices.values()):
        values = dict(zip(choices, combination, strict=True))
        expected = edited(loaded, values)
        text = set_values(source, values, "train.yml")
        assert read_yaml(text, "t")[0] == expected
        assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == comments
