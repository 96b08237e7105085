"""Shared fixtures: the real datasets in shared/datasets, and a tiny byte-level BPE tokenizer
with a ChatML chat template (like SmolLM2's), trained in the test on the Alpaca rows.

The CLI tests (apps/ft-cli/tests) load this file by its path for ``build_chat_tokenizer``,
so the two test suites use one tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ft_data import registry

# SmolLM2-Instruct's template: no {% generation %} blocks, a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same template with the assistant turns marked, for transformers' return_assistant_tokens_mask.
CHATML_TEMPLATE_MARKED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_chat_tokenizer(folder: Path, alpaca_rows: Iterable[dict[str, str]]) -> Path:
    """Write tokenizer.json (trained on the rows' instructions and answers) and
    tokenizer_config.json (special tokens, the ChatML template) into ``folder``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        [row["instruction"] + "\n" + row["output"] for row in alpaca_rows], trainer
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _datasets_folder() -> Path | None:
    candidates = [os.environ.get("FT_TEST_DATASETS", "")]
    for parent in Path(__file__).resolve().parents:
        candidates += [str(parent / "shared" / "datasets")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "alpaca_en_demo.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def datasets() -> Path:
    """shared/datasets (or $FT_TEST_DATASETS): the real data the tests read."""
    folder = _datasets_folder()
    if folder is None:
        pytest.skip("shared/datasets not found; set FT_TEST_DATASETS")
    return folder


@pytest.fixture(scope="session")
def alpaca_rows(datasets: Path) -> list[dict[str, str]]:
    return json.loads((datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tokenizer_dir(
    tmp_path_factory: pytest.TempPathFactory, alpaca_rows: list[dict[str, str]]
) -> Path:
    """A model folder with tokenizer.json (byte-level BPE, 800 tokens) and tokenizer_config.json."""
    return build_chat_tokenizer(tmp_path_factory.mktemp("tokenizer"), alpaca_rows)


@pytest.fixture
def marked_template() -> str:
    """The tokenizer's template with {% generation %} blocks around each answer."""
    return CHATML_TEMPLATE_MARKED


@pytest.fixture(autouse=True)
def builtins_only() -> Iterator[None]:
    """Tests see the built-in formats and templates only, whatever else is installed."""
    registry.use_plugins(False)
    yield
    registry.use_plugins(None)
