"""train.yml loading: precedence, shorthands, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_config import ConfigError, TrainConfig, load_config
from ft_config.profiles import BUILTIN


def write(tmp_path: Path, text: str, name: str = "train.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(path: Path | None = None, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return str(info.value).splitlines()


def test_no_file_gives_working_defaults():
    config = load_config()
    assert config == TrainConfig()
    assert config.model.name == "smollm2-135m"
    assert config.method.name == "lora"
    assert config.training.learning_rate == 2e-4


def test_wrong_type_names_file_line_and_key(tmp_path):
    path = write(
        tmp_path, "model:\n  name: smollm2-135m\ntraining:\n  epochs: 1\n  learning_rate: fast\n"
    )
    assert errors(path) == [f"{path}:5: training.learning_rate: expected a number, got 'fast'"]


def test_every_problem_is_reported_in_line_order(tmp_path):
    path = write(
        tmp_path,
        "training:\n  learnig_rate: 1.0e-4\n  epochs: many\nmethod:\n  name: lorra\n  rank: 0\n",
    )
    assert errors(path) == [
        f"{path}:2: training.learnig_rate: unknown key (did you mean 'learning_rate'?)",
        f"{path}:3: training.epochs: expected a number, got 'many'",
        f"{path}:5: method.name: expected one of 'lora', 'dora', 'qlora', 'full', 'prefix', "
        "'p-tuning', got 'lorra' (did you mean 'lora'?)",
    ]


def test_unknown_key_in_the_wrong_section_points_to_the_right_one(tmp_path):
    path = write(tmp_path, "method:\n  learning_rate: 1.0e-4\n")
    assert errors(path) == [
        f"{path}:2: method.learning_rate: unknown key in method (did you mean 'training.learning_rate'?)"
    ]


def test_unknown_section(tmp_path):
    path = write(tmp_path, "trainng:\n  epochs: 1\n")
    assert errors(path) == [f"{path}:1: trainng: unknown key (did you mean 'training'?)"]


def test_a_secret_in_train_yml_is_sent_to_passwords_yml(tmp_path):
    path = write(tmp_path, "model:\n  hf_token: hf_abc\n")
    (line,) = errors(path)
    assert line.startswith(
        f"{path}:2: model.hf_token: unknown key; secrets belong in passwords.yml"
    )
    assert "hf_abc" not in line


def test_python_tags_are_refused(tmp_path):
    path = write(tmp_path, "model:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    (line,) = errors(path)
    assert line.startswith(
        f"{path}:2: refusing the YAML tag in this line (!!python/object/apply:os.system)"
    )


def test_duplicate_keys_are_an_error_not_a_silent_overwrite(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 1\n  epochs: 2\n")
    assert errors(path) == [
        f"{path}:3: training.epochs: this key is written twice (first on line 2); "
        "YAML would silently keep only the last one. Remove one of them."
    ]


def test_broken_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 1\n learning_rate: 2\n")
    (line,) = errors(path)
    assert line.startswith(f"{path}:3: this is not valid YAML")


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "train.yml"
    path.write_bytes(b"model:\n  name: caf\xe9\n")
    assert errors(path) == [f"{path}:2: this line is not valid UTF-8; save the file as UTF-8"]


def test_missing_file(tmp_path):
    assert errors(tmp_path / "nope.yml") == [f"{tmp_path / 'nope.yml'}: no such file"]


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- just\n- a list\n")
    assert errors(path) == [
        f"{path}:1: expected a mapping of sections (model:, data:, training:, ...)"
    ]


def test_empty_file_and_empty_sections_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == TrainConfig()
    assert load_config(write(tmp_path, "training:\nmodel:\n", "b.yml")) == TrainConfig()


def test_yaml_1_1_exponent_without_dot_is_still_a_number(tmp_path):
    # PyYAML reads `2e-4` as a string; users write it that way all the time.
    config = load_config(write(tmp_path, "training:\n  learning_rate: 2e-4\n"))
    assert config.training.learning_rate == 2e-4


def test_booleans_are_not_numbers_and_numbers_not_booleans(tmp_path):
    path = write(tmp_path, "training:\n  epochs: yes\n  compile: 1\n")
    assert errors(path) == [
        f"{path}:2: training.epochs: expected a number, got true",
        f"{path}:3: training.compile: expected true or false, got 1",
    ]


def test_list_items_are_checked_one_by_one(tmp_path):
    path = write(tmp_path, "method:\n  target_modules:\n    - q_proj\n    - {a: 1}\n")
    assert errors(path) == [f"{path}:4: method.target_modules[1]: expected a string, got a mapping"]


def test_a_string_is_not_split_into_a_list(tmp_path):
    path = write(tmp_path, "output:\n  export: gguf\n")
    assert errors(path) == [f"{path}:2: output.export: expected a list of strings, got 'gguf'"]


def test_union_settings(tmp_path):
    config = load_config(
        write(
            tmp_path, "training:\n  batch_size: auto\nmethod:\n  target_modules: [q_proj, v_proj]\n"
        )
    )
    assert config.training.batch_size == "auto"
    assert config.method.target_modules == ["q_proj", "v_proj"]
    path = write(tmp_path, "training:\n  batch_size: big\n", "bad.yml")
    assert errors(path) == [
        f"{path}:2: training.batch_size: expected a whole number or 'auto', got 'big'"
    ]


def test_bounds_are_checked(tmp_path):
    path = write(
        tmp_path, "training:\n  learning_rate: 0\n  keep_last: 0\ndata:\n  validation_split: 0.9\n"
    )
    assert errors(path) == [
        f"{path}:2: training.learning_rate: must be greater than 0, got 0",
        f"{path}:3: training.keep_last: must be at least 1, got 0",
        f"{path}:5: data.validation_split: must be at most 0.5, got 0.9",
    ]


def test_patterns_are_checked(tmp_path):
    path = write(tmp_path, "resources:\n  device: gpu\n")
    (line,) = errors(path)
    assert line == (
        f"{path}:2: resources.device: 'gpu' is not valid here: "
        "`auto` (cuda > mps > cpu), `cpu`, `cuda`, `cuda:N` or `mps`."
    )


def test_a_refused_run_name_says_which_characters_are_allowed(tmp_path):
    path = write(tmp_path, "output:\n  run_name: my run/1\n")
    assert errors(path) == [
        f"{path}:2: output.run_name: 'my run/1' is not valid here: a run name takes letters "
        "(A-Z, a-z), digits, '.', '_' and '-', and starts with a letter or digit (no spaces, "
        "no '/')"
    ]


def test_rules_across_settings(tmp_path):
    path = write(tmp_path, "model:\n  task: sequence-classification\ndata:\n  format: columns\n")
    assert errors(path) == [
        f"{path}:3: data.columns: `format: columns` needs `columns`, e.g. {{prompt: question, response: answer}}",
        f"{path}:3: data.label_column: `task: sequence-classification` needs the label column's name",
    ]


def test_search_space_names_real_settings(tmp_path):
    path = write(
        tmp_path, "tune:\n  search_space:\n    training.learning_rat: {low: 1.0e-5, high: 1.0e-3}\n"
    )
    assert errors(path) == [
        f"{path}:3: tune.search_space.training.learning_rat: no such setting (did you mean 'training.learning_rate'?)"
    ]


def test_shorthands(tmp_path):
    config = load_config(write(tmp_path, "model: Qwen/Qwen2.5-0.5B-Instruct\nmethod: dora\n"))
    assert config.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert config.method.name == "dora"


def test_numbers_where_text_is_expected_mean_the_text(tmp_path):
    config = load_config(write(tmp_path, "model:\n  revision: 20240101\n"))
    assert config.model.revision == "20240101"


# --- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_profile_loads_and_changes_something(name):
    config = load_config(profile=name)
    assert config.profile == name
    assert config != TrainConfig(profile=name)


def test_profile_values_and_precedence(tmp_path):
    path = write(tmp_path, "profile: domain\ntraining:\n  epochs: 2\n")
    config = load_config(path)
    assert config.data.format == "text"  # from the profile
    assert config.data.train_on == "all"  # from the profile
    assert config.training.epochs == 2  # the file beats the profile
    assert config.training.learning_rate == 5e-5  # the profile beats the defaults
    config = load_config(path, overrides=["training.epochs=4", "data.train_on=completions"])
    assert config.training.epochs == 4  # --set beats the file
    assert config.data.train_on == "completions"  # --set beats the profile


def test_profile_option_replaces_the_files_profile(tmp_path):
    path = write(tmp_path, "profile: domain\n")
    assert load_config(path, profile="code").data.max_seq_length == 4096


def test_unknown_profile_suggests(tmp_path):
    path = write(tmp_path, "profile: chatt\n")
    assert errors(path) == [
        f"{path}:1: profile: no profile 'chatt'; did you mean 'chat'? profiles: chat, instruction, code, domain"
    ]


def test_profile_from_a_file_and_errors_inside_it_point_into_it(tmp_path):
    write(tmp_path, "training:\n  epochs: 1\n  learning_rate: quick\n", "mine.yml")
    path = write(tmp_path, "profile: mine.yml\n")
    assert errors(path) == [
        f"{tmp_path / 'mine.yml'}:3: training.learning_rate: expected a number, got 'quick'"
    ]
    write(tmp_path, "training:\n  epochs: 1\n", "mine.yml")
    assert load_config(path).training.epochs == 1


def test_user_profiles_live_in_the_app_config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "configs" / "profiles"
    folder.mkdir(parents=True)
    (folder / "house.yml").write_text("# House style.\nmethod:\n  rank: 4\n")
    assert load_config(profile="house").method.rank == 4


# --- overrides --------------------------------------------------------------------------------


def test_overrides_are_type_checked_and_name_themselves():
    assert errors(overrides=["training.learning_rate=fast"]) == [
        "--set training.learning_rate=fast: training.learning_rate: expected a number, got 'fast'"
    ]
    assert errors(overrides=["training.learnig_rate=1"]) == [
        "--set training.learnig_rate=1: training.learnig_rate: unknown key (did you mean 'learning_rate'?)"
    ]
    assert errors(overrides=["nonsense"]) == [
        "--set nonsense: expected KEY=VALUE, e.g. --set training.epochs=2"
    ]


def test_override_values_are_yaml():
    config = load_config(
        overrides=[
            "method.target_modules=[q_proj, v_proj]",
            "training.max_grad_norm=null",
            "training.compile=true",
            "data.system_prompt=Answer: briefly",
            "method=dora",
        ]
    )
    assert config.method.target_modules == ["q_proj", "v_proj"]
    assert config.training.max_grad_norm is None
    assert config.training.compile is True
    assert config.data.system_prompt == "Answer: briefly"
    assert config.method.name == "dora"


def test_section_shorthand_override_keeps_the_rest_of_the_section(tmp_path):
    path = write(tmp_path, "method:\n  rank: 32\n")
    config = load_config(path, overrides=["method=dora"])
    assert (config.method.name, config.method.rank) == ("dora", 32)


def test_the_prompt_methods_are_named_for_what_they_are():
    """`p-tuning` is peft's PromptEncoder, P-tuning v1 (input tokens only); the deep prompts of
    P-tuning v2 are what `prefix` trains. The reference says so (issue 23)."""
    from ft_config import json_schema

    (method, *_) = json_schema()["properties"]["method"]["anyOf"]
    help_text = method["properties"]["name"]["description"]
    assert (
        "`p-tuning` (P-tuning v1: virtual input tokens from a trained prompt encoder" in help_text
    )
    assert "`prefix` (prefix tuning: trained key/value prefixes in every layer, the deep " in (
        help_text
    )
