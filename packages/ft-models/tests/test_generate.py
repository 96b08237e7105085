"""Generation on both backends: exactness against transformers, sampling, stop strings,
streaming, chat templates and LoRA adapters, on tiny random models (and one slow SmolLM2 check)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ft_models.generate import (
    GenerationError,
    GenerationOptions,
    Generator,
    IncrementalDecoder,
    Sampler,
    StopFilter,
    load_template,
    merge_adapter_mlx,
    read_adapter_config,
)

TinyModelFactory = Callable[[str], Path]
BACKENDS = ("torch", "mlx")
PROMPT = "The capital of France"
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def generators(tiny_llama: Path) -> dict[str, Generator]:
    """The tiny Llama on each backend, in float32 so the two compute the same numbers."""
    return {b: Generator.load(tiny_llama, backend=b, dtype="float32") for b in BACKENDS}


@pytest.fixture(scope="module")
def hf_llama(tiny_llama: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def hf_greedy(model, ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """transformers' own greedy decoding, the reference."""
    import torch

    out = model.generate(
        torch.tensor([ids], device=model.device),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=model.config.pad_token_id,
        **kwargs,
    )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter for the tiny Llama with random, non-zero A and B matrices."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(1)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)
    return folder


# -- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompt", [PROMPT, CHAT], ids=["raw", "chat"])
def test_greedy_equals_transformers_generate(generators, hf_llama, backend, prompt) -> None:
    generator = generators[backend]
    ids = generator.encode(prompt)
    result = generator.generate(prompt, GenerationOptions(max_tokens=24))
    assert list(result.tokens) == hf_greedy(hf_llama, ids, 24)
    assert result.prompt_tokens == len(ids)
    assert result.finish_reason == "length"


@pytest.mark.parametrize("backend", BACKENDS)
def test_repetition_penalty_equals_transformers_and_repeats_less(
    generators, hf_llama, backend
) -> None:
    generator = generators[backend]
    ids = generator.encode(PROMPT)
    plain = generator.generate(PROMPT, GenerationOptions(max_tokens=40))
    penalized = generator.generate(PROMPT, GenerationOptions(max_tokens=40, repetition_penalty=1.8))
    assert list(penalized.tokens) == hf_greedy(hf_llama, ids, 40, repetition_penalty=1.8)

    def repeats(tokens: tuple[int, ...]) -> int:  # tokens that were already in prompt or answer
        seen, count = set(ids), 0
        for token in tokens:
            count += token in seen
            seen.add(token)
        return count

    assert repeats(plain.tokens) > 0
    assert repeats(penalized.tokens) < repeats(plain.tokens)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_greedy_equals_transformers_on_other_architectures(
    tiny_model_factory: TinyModelFactory, arch: str
) -> None:
    import transformers

    folder = tiny_model_factory(arch)
    generator = Generator.load(folder, backend="torch", dtype="float32")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = generator.encode(PROMPT)
    result = generator.generate(PROMPT, GenerationOptions(max_tokens=16))
    assert list(result.tokens) == hf_greedy(reference, ids, 16)
    if arch == "qwen2":  # tiny GPT-2's MLP width is one mlx-lm cannot build
        mlx = Generator.load(folder, backend="mlx", dtype="float32")
        assert mlx.generate(PROMPT, GenerationOptions(max_tokens=16)).tokens == result.tokens


def test_torch_and_mlx_greedy_agree(generators) -> None:
    options = GenerationOptions(max_tokens=48)
    torch_result = generators["torch"].generate(CHAT, options)
    mlx_result = generators["mlx"].generate(CHAT, options)
    assert torch_result.tokens == mlx_result.tokens
    assert torch_result.text == mlx_result.text
    assert len(torch_result.tokens) == 48


# -- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_text_and_another_seed_differs(generators, backend) -> None:
    generator = generators[backend]

    def sample(seed: int) -> tuple[int, ...]:
        options = GenerationOptions(max_tokens=24, temperature=1.0, seed=seed)
        return generator.generate(PROMPT, options).tokens

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_sampling_agrees_across_backends(generators) -> None:
    # One sampler for both backends: the same seed draws the same tokens from the same logits.
    options = GenerationOptions(max_tokens=24, temperature=0.9, top_p=0.95, top_k=50, seed=3)
    assert generators["torch"].generate(PROMPT, options).tokens == (
        generators["mlx"].generate(PROMPT, options).tokens
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_1_and_tiny_top_p_equal_greedy(generators, backend) -> None:
    generator = generators[backend]
    greedy = generator.generate(PROMPT, GenerationOptions(max_tokens=24)).tokens
    top_k = GenerationOptions(max_tokens=24, temperature=2.0, top_k=1, seed=5)
    top_p = GenerationOptions(max_tokens=24, temperature=2.0, top_p=1e-6, seed=5)
    assert generator.generate(PROMPT, top_k).tokens == greedy
    assert generator.generate(PROMPT, top_p).tokens == greedy


def test_sampler_top_k_and_top_p_keep_exactly_the_allowed_tokens() -> None:
    logits = np.log(np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float32))

    def draws(**options) -> set[int]:
        sampler = Sampler(GenerationOptions(temperature=1.0, seed=0, **options), [])
        return {sampler(logits) for _ in range(400)}

    assert draws() == {0, 1, 2, 3}
    assert draws(top_k=2) == {1, 2}
    assert draws(top_p=0.7) == {1, 2}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert draws(top_p=0.5) == {1}
    assert draws(top_k=3, top_p=0.9) == {1, 2, 3}


def test_sampler_repetition_penalty_follows_transformers_rule() -> None:
    logits = np.array([2.0, -1.0, 1.5], dtype=np.float32)
    # Token 0 seen: 2.0 / 2 = 1.0 < 1.5, so token 2 wins; unseen tokens are untouched.
    assert Sampler(GenerationOptions(repetition_penalty=2.0), [0])(logits) == 2
    assert Sampler(GenerationOptions(), [0])(logits) == 0
    # A negative logit is multiplied, so it falls further: -1 * 2 = -2 < -1.5.
    penalized = Sampler(GenerationOptions(repetition_penalty=2.0), [1])
    assert penalized(np.array([-3.0, -1.0, -1.5], dtype=np.float32)) == 2


# -- stopping and streaming -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_tokens_gives_length(generators, backend) -> None:
    result = generators[backend].generate(PROMPT, GenerationOptions(max_tokens=5))
    assert result.finish_reason == "length"
    assert len(result.tokens) == 5
    assert result.stop is None


def test_the_context_length_ends_the_answer_and_refuses_longer_prompts(generators) -> None:
    generator = generators["torch"]
    assert generator.context_length == 512  # the tiny Llama's max_position_embeddings
    size = len(generator.encode(PROMPT))
    near = Generator(generator.lm, generator.tokenizer, context_length=size + 3)
    result = near.generate(PROMPT, GenerationOptions(max_tokens=10))
    assert (len(result.tokens), result.finish_reason) == (3, "length")
    full = Generator(generator.lm, generator.tokenizer, context_length=size)
    with pytest.raises(
        GenerationError, match=f"the prompt is {size} tokens and this model reads at most {size}"
    ):
        full.generate(PROMPT)


def test_eos_token_stops_with_stop(generators) -> None:
    generator = generators["torch"]
    first = generator.generate(PROMPT, GenerationOptions(max_tokens=1)).tokens[0]
    ending = Generator(generator.lm, generator.tokenizer, eos_ids=frozenset({first}))
    result = ending.generate(PROMPT, GenerationOptions(max_tokens=10))
    assert (result.tokens, result.text, result.finish_reason) == ((first,), "", "stop")


def _ascii_window(text: str, size: int) -> int:
    """The start of the first run of `size` ASCII letters that first occurs there, after 2."""
    for start in range(2, len(text) - size):
        window = text[start : start + size]
        if window.isascii() and window.isalpha() and text.find(window) == start:
            return start
    raise AssertionError(f"no ASCII window in {text!r}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_string_cuts_exactly_and_never_leaks_into_the_stream(generators, backend) -> None:
    generator = generators[backend]
    full = generator.generate(PROMPT, GenerationOptions(max_tokens=40))
    start = _ascii_window(full.text, 3)
    stop = full.text[start : start + 3]
    options = GenerationOptions(max_tokens=40, stop=[stop, "never-generated"])
    result = generator.generate(PROMPT, options)
    assert result.text == full.text[:start]
    assert (result.finish_reason, result.stop) == ("stop", stop)
    assert result.tokens == full.tokens[: len(result.tokens)]
    assert len(result.tokens) < 40

    stream = generator.stream(PROMPT, options)
    deltas = list(stream)
    assert "".join(deltas) == result.text
    assert stream.result == attrs_evolve_timing(result, stream.result)


def attrs_evolve_timing(result, other):
    """`result` with `other`'s timings, so two runs compare on everything but the clock."""
    import attrs

    return attrs.evolve(
        result,
        tokens_per_s=other.tokens_per_s,
        prompt_tokens_per_s=other.prompt_tokens_per_s,
        elapsed_s=other.elapsed_s,
    )


def test_stream_without_stop_joins_to_the_decoded_tokens(generators) -> None:
    generator = generators["mlx"]
    stream = generator.stream(CHAT, GenerationOptions(max_tokens=30))
    text = "".join(stream)
    assert stream.result is not None
    assert text == stream.result.text
    assert text == generator.tokenizer.decode(stream.result.tokens, skip_special_tokens=True)


def test_stop_filter_holds_back_possible_starts_of_a_stop_string() -> None:
    stops = StopFilter(["</answer>", "STOP"])
    shown = [stops.push(delta) for delta in ["Par", "is</", "ans", "wer", "> more"]]
    assert shown == ["Par", "is", "", "", ""]
    assert (stops.text, stops.matched) == ("Paris", "</answer>")

    stops = StopFilter(["</answer>"])
    shown = [stops.push(delta) for delta in ["a</", "b <", "/an"]]
    assert shown == ["a", "</b ", ""]  # "</b" cannot start "</answer>": let out once seen
    assert stops.flush() == "</an"  # the end came first: held text is the answer's
    assert stops.matched is None


def test_stop_filter_emits_a_prefix_of_the_cut_text_for_every_split() -> None:
    text = "one two STOP three ST"
    for size in range(1, 6):
        stops = StopFilter(["STOP", "ee S"])
        shown = ""
        for index in range(0, len(text), size):
            shown += stops.push(text[index : index + size])
            assert "one two ".startswith(shown)
            if stops.matched:
                break
        assert (shown, stops.matched) == ("one two ", "STOP")


def test_incremental_decoder_joins_to_the_full_decode(generators) -> None:
    tokenizer = generators["torch"].tokenizer
    ids = tokenizer.encode("café, naïve 日本 — Paris", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == "café, naïve 日本 — Paris"


# -- chat templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "chatml", "llama3", "alpaca"])
def test_chat_prompt_is_rendered_as_training_renders_it(tiny_llama: Path, generators, name):
    from ft_data.conversation import Conversation, Message
    from ft_data.templates import get_template
    from ft_data.tokenizer import load_tokenizer

    trained = load_tokenizer(tiny_llama)
    template = get_template(name, tokenizer_template=trained.chat_template)
    conversation = Conversation([Message(m["role"], m["content"]) for m in CHAT])
    expected = template.render(conversation, trained.special_tokens, add_generation_prompt=True)

    torch_gen = generators["torch"]
    generator = Generator(torch_gen.lm, torch_gen.tokenizer, template=load_template(name))
    assert generator.render(CHAT) == expected
    assert (
        generator.encode(CHAT) == trained.tokenizer.encode(expected, add_special_tokens=False).ids
    )


def test_template_from_a_jinja_file_and_unknown_names(tmp_path: Path) -> None:
    file = tmp_path / "mine.jinja"
    file.write_text("{% for m in messages %}{{ m.content }}|{% endfor %}", encoding="utf-8")
    assert load_template(file).source == file.read_text(encoding="utf-8")
    assert load_template("auto") is None
    with pytest.raises(GenerationError, match=r"unknown chat template 'nope'.*chatml"):
        load_template("nope")


def test_a_tokenizer_without_chat_template_needs_one_named(
    tiny_llama: Path, tmp_path: Path, generators
) -> None:
    import shutil

    folder = tmp_path / "plain"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    generator = Generator.load(folder, backend="torch", dtype="float32")
    with pytest.raises(GenerationError, match="no chat template: name one"):
        generator.encode(CHAT)
    assert generator.encode(PROMPT) == generators["torch"].encode(PROMPT)


# -- adapters ---------------------------------------------------------------------------------


def test_adapter_changes_output_and_matches_across_backends(tiny_llama: Path, adapter, generators):
    options = GenerationOptions(max_tokens=32)
    with_adapter = {
        b: Generator.load(tiny_llama, backend=b, dtype="float32", adapter=adapter) for b in BACKENDS
    }
    base = generators["torch"].generate(CHAT, options).tokens
    tuned = with_adapter["torch"].generate(CHAT, options).tokens
    assert tuned != base
    assert with_adapter["mlx"].generate(CHAT, options).tokens == tuned


def test_an_adapter_for_another_model_is_refused_on_both_backends(
    tiny_model_factory: TinyModelFactory, adapter: Path
) -> None:
    phi3 = tiny_model_factory("phi3")  # one qkv_proj where the Llama has q_proj, k_proj, v_proj
    for backend in BACKENDS:
        with pytest.raises(GenerationError, match=r"adapts model\.layers\.0\.self_attn\.q_proj, "):
            Generator.load(phi3, backend=backend, dtype="float32", adapter=adapter)


def test_mlx_reads_a_long_prompt_in_chunks(generators, monkeypatch) -> None:
    from ft_models.generation import mlx_backend

    whole = generators["mlx"].generate(CHAT, GenerationOptions(max_tokens=12)).tokens
    monkeypatch.setattr(mlx_backend, "PREFILL_CHUNK", 5)
    assert generators["mlx"].generate(CHAT, GenerationOptions(max_tokens=12)).tokens == whole


def test_mlx_merge_touches_every_adapted_matrix(tiny_llama: Path, adapter) -> None:
    from ft_models.load import load_mlx

    model, _ = load_mlx(tiny_llama, dtype="float32")
    assert merge_adapter_mlx(model, adapter) == 2 * 3  # 2 layers x q_proj, v_proj, down_proj


def test_adapter_folder_errors(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(GenerationError, match="no such folder"):
        read_adapter_config(tmp_path / "missing")
    with pytest.raises(GenerationError, match="it is a full model"):
        read_adapter_config(tiny_llama)
    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "adapter_model.bin").write_bytes(b"junk")
    with pytest.raises(GenerationError, match=r"only adapter_model.bin, a pickle"):
        read_adapter_config(tmp_path)


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
        ({"stop": [""]}, "stop strings must be non-empty"),
    ],
)
def test_bad_options_are_refused(options, message) -> None:
    with pytest.raises(GenerationError, match=message):
        GenerationOptions(**options)


def test_a_single_stop_string_is_one_stop() -> None:
    assert GenerationOptions(stop="\n\n").stop == ("\n\n",)


# -- CUDA -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_equals_transformers_on_cuda(tiny_llama: Path, adapter: Path, dtype: str) -> None:
    import torch
    import transformers

    generator = Generator.load(tiny_llama, backend="torch", dtype=dtype, device="cuda")
    assert next(generator.lm.model.parameters()).device.type == "cuda"
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=getattr(torch, dtype)
    )
    ids = generator.encode(CHAT)
    result = generator.generate(CHAT, GenerationOptions(max_tokens=32))
    assert list(result.tokens) == hf_greedy(reference.to("cuda").eval(), ids, 32)
    sampled = GenerationOptions(max_tokens=16, temperature=1.0, top_p=0.9, seed=4)
    assert generator.generate(CHAT, sampled).tokens == generator.generate(CHAT, sampled).tokens
    tuned = Generator.load(tiny_llama, backend="torch", dtype=dtype, device="cuda", adapter=adapter)
    assert tuned.generate(CHAT, GenerationOptions(max_tokens=32)).tokens != result.tokens


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2_gguf: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the alias resolves to the embedded GGUF
    generator = Generator.load("smollm2-135m", backend="torch", dtype="float32")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    result = generator.generate(question, GenerationOptions(max_tokens=20))
    assert "Paris" in result.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_ids_are_a_prompt_as_they_are(generators, backend) -> None:
    generator = generators[backend]
    messages = [{"role": "user", "content": "hello there"}]
    ids = generator.encode(messages)
    assert generator.encode(ids) == ids
    options = GenerationOptions(max_tokens=6)
    assert generator.generate(ids, options).tokens == generator.generate(messages, options).tokens
