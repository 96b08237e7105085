import json
import sys
from pathlib import Path

import pytest

from ft_testing.plugin import TinyModelFactory
from ft_testing.tiny_models import ARCHITECTURES, CAUSAL_ARCHITECTURES, build_tiny_model

pytest.importorskip("transformers", reason='tiny models need pip install "ft-testing[models]"')

CAUSAL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
BERT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
# Exact sizes: a change here means the tiny models changed, and every test built on them may too.
PARAMETERS = {
    "llama": 139_584,
    "mistral": 139_584,
    "phi": 132_864,
    "phi3": 139_584,
    "qwen2": 139_840,
    "qwen3": 139_648,
    "gemma": 106_816,
    "gemma2": 107_072,
    "gemma3": 107_136,
    "gpt2": 132_608,
    "gptj": 132_352,
    "bert": 137_026,
}
GQA_ARCHITECTURES = ("llama", "mistral", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


def load(path: Path, arch: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForSequenceClassification if arch == "bert" else AutoModelForCausalLM
    return auto.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_architectures() -> None:
    assert ARCHITECTURES == (
        "llama", "mistral", "phi", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gpt2",
        "gptj", "bert",
    )  # fmt: skip
    assert set(PARAMETERS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builds_loads_back_and_runs(tiny_model_factory: TinyModelFactory, arch: str) -> None:
    import torch

    path = tiny_model_factory(arch)
    model, tokenizer = load(path, arch)

    assert {p.name for p in path.iterdir()} == (BERT_FILES if arch == "bert" else CAUSAL_FILES)
    assert model.num_parameters() == PARAMETERS[arch]
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    if arch in GQA_ARCHITECTURES:
        assert config.num_key_value_heads == 2
    assert config.vocab_size == len(tokenizer) == 512
    assert config.pad_token_id == tokenizer.pad_token_id

    batch = tokenizer(
        ["The capital of France is Paris.", "Hello"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    width = batch["input_ids"].shape[1]
    assert tuple(logits.shape) == ((2, 2) if arch == "bert" else (2, width, 512))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", CAUSAL_ARCHITECTURES)
def test_causal_tokenizer_and_chat_template(
    tiny_model_factory: TinyModelFactory, arch: str
) -> None:
    from tokenizers import Tokenizer

    path = tiny_model_factory(arch)
    model, tokenizer = load(path, arch)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]

    text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)

    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 2, 0)
    assert (model.config.bos_token_id, model.config.eos_token_id) == (0, 2)
    # Every arch loads the same tokenizer, whatever class AutoTokenizer picks for it.
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    sample = "Hello  world, what's 1234?\n<|im_start|>user"
    assert tokenizer(sample)["input_ids"] == raw.encode(sample).ids
    assert tokenizer("Hello world")["input_ids"] == [42, 71, 477, 81, 291, 304, 78, 70]
    assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample


def test_bert_tokenizer(tiny_model_factory: TinyModelFactory) -> None:
    _, tokenizer = load(tiny_model_factory("bert"), "bert")

    ids = tokenizer("Hello world, what is the capital of France?")["input_ids"]

    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "[CLS]", "hel", "##l", "##o", "w", "##or", "##l", "##d", ",",
        "what", "is", "the", "capital", "of", "france", "?", "[SEP]",
    ]  # fmt: skip
    pair = tokenizer("a", "b")
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1]


def test_build_is_deterministic(tmp_path: Path) -> None:
    for arch in ("llama", "bert"):
        first = build_tiny_model(arch, tmp_path / "first" / arch)
        second = build_tiny_model(arch, tmp_path / "second" / arch)
        for file in sorted(first.iterdir()):
            assert file.read_bytes() == (second / file.name).read_bytes(), file.name


def test_config_is_saved_as_safetensors_only(tiny_model_factory: TinyModelFactory) -> None:
    path = tiny_model_factory("gpt2")
    config = json.loads((path / "config.json").read_text())

    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert not [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'falcon': choose one of llama, "):
        build_tiny_model("falcon", tmp_path)


def test_missing_models_extra_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)

    with pytest.raises(ImportError, match=r'pip install "ft-testing\[models\]"'):
        build_tiny_model("llama", tmp_path)


def test_the_gemmas_have_one_local_and_one_global_layer(
    tiny_model_factory: TinyModelFactory,
) -> None:
    configs = {
        arch: json.loads((tiny_model_factory(arch) / "config.json").read_text())
        for arch in ("qwen3", "gemma2", "gemma3")
    }

    assert configs["qwen3"]["head_dim"] == 16  # not Qwen3's default 128
    assert configs["gemma3"]["model_type"] == "gemma3_text"  # the text-only Gemma 3
    for arch in ("gemma2", "gemma3"):
        config = configs[arch]
        assert config["layer_types"] == ["sliding_attention", "full_attention"]
        assert (config["sliding_window"], config["query_pre_attn_scalar"]) == (24, 16)
    assert (
        configs["gemma2"]["attn_logit_softcapping"],
        configs["gemma2"]["final_logit_softcapping"],
    ) == (50.0, 30.0)
