"""GGUF import of tiny files written here with gguf-py's GGUFWriter, as llama.cpp's converter
writes them: each tensor type dequantizes to exactly what gguf's own reader gives, the q/k
permutation is undone, the folder is atomic, re-import is skipped, shards load.

The dequantization tests need only numpy and gguf (ft-models' base install); the ones that
build Hugging Face models skip without torch and transformers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from ft_models.gguf import GGUFError, import_gguf, validate_gguf
from ft_models.gguf.safetensors_file import float32_to_bfloat16_bits

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary as llama.cpp writes a `gpt2` tokenizer: the 256 byte
    symbols, a few merges, then the control tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(code) for _, code in sorted(zip(printable, codes, strict=True))]
    merges = ["Ġ t", "h e", "Ġt he", "i s"]
    return [*symbols, "Ġt", "he", "Ġthe", "is", *SPECIALS], merges


TOKENS, MERGES = byte_level_vocab()
VOCAB = len(TOKENS)


def byte_level_tokenizer(writer: gguf.GGUFWriter) -> None:
    """`tokenizer.ggml.model = gpt2`, as SmolLM2, Qwen and Llama 3 files have it."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in TOKENS])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(TOKENS.index("<|im_start|>"))
    writer.add_eos_token_id(TOKENS.index("<|im_end|>"))
    writer.add_unk_token_id(TOKENS.index("<|endoftext|>"))
    writer.add_pad_token_id(TOKENS.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), as it writes q/k."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama_unpermute_by_index(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `llama_permute`, found by permuting row numbers: independent of the
    reshape arithmetic the importer uses."""
    rows = llama_permute(np.arange(weights.shape[0]), n_head)
    return weights[np.argsort(rows)]


def random_llama_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A llama's parameters by Hugging Face name, without torch."""
    rng = np.random.default_rng(seed)
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
        }
    return {
        name: rng.standard_normal(shape).astype(np.float32) * 0.2 for name, shape in shapes.items()
    }


def to_gguf_tensors(arch: str, state: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """Hugging Face parameters -> GGUF name and layout, as llama.cpp's converter does it."""
    arch_id = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(arch_id, config["layers"])
    out = {}
    for hf_name, values in state.items():
        if hf_name.endswith(".attn.bias") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        base, _, suffix = hf_name.rpartition(".")
        name = f"{names.get_name(base)}.{suffix}"
        if arch == "llama" and name.endswith("attn_q.weight"):
            values = llama_permute(values, config["heads"])
        elif arch == "llama" and name.endswith("attn_k.weight"):
            values = llama_permute(values, config["kv_heads"])
        elif arch == "gemma2" and name.endswith("norm.weight"):
            values = values + 1
        elif (
            arch == "gpt2"
            and name.split(".")[-2] in {"attn_qkv", "attn_output", "ffn_up", "ffn_down"}
            and suffix == "weight"
        ):
            values = values.T
        out[name] = np.ascontiguousarray(values, dtype=np.float32)
    if arch == "gpt2":  # llama.cpp writes GPT-2's tied head out as its own tensor
        out["output.weight"] = out["token_embd.weight"].copy()
    return out


def write_gguf(
    path: Path,
    arch: str,
    tensors: dict[str, np.ndarray],
    hparams: dict,
    ggml_type: Q = Q.F32,
    *,
    tokenizer: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    """A GGUF file as llama.cpp writes one: 2-D weights in `ggml_type`, 1-D ones in F32, and
    the tokenizer metadata `tokenizer` adds (none by default)."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny")
    for key, value in hparams.items():
        getattr(writer, f"add_{key}")(value)
    if tokenizer is not None:
        tokenizer(writer)
    for tensor_name, values in tensors.items():
        if values.ndim == 1 or ggml_type == Q.F32:
            writer.add_tensor(tensor_name, values)
        elif ggml_type == Q.F16:
            writer.add_tensor(tensor_name, values.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, quantize(values, ggml_type), raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_HPARAMS = {
    "context_length": 256,
    "embedding_length": HIDDEN,
    "block_count": LAYERS,
    "feed_forward_length": FFN,
    "rope_dimension_count": HEAD_DIM,
    "head_count": HEADS,
    "head_count_kv": KV_HEADS,
    "layer_norm_rms_eps": 1e-5,
    "rope_freq_base": 10000.0,
}
LLAMA_SHAPE = {"layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Raw reading, so bfloat16 comes back as its uint16 bits: numpy has no bfloat16."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    kinds = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        out[name] = np.frombuffer(
            data[8 + length + start : 8 + length + end], kinds[spec["dtype"]]
        ).reshape(spec["shape"])
    return out


def gguf_reader_values(path: Path) -> dict[str, np.ndarray]:
    """What gguf-py's own reader dequantizes each tensor to."""
    return {t.name: dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def llama_state() -> dict[str, np.ndarray]:
    return random_llama_state()


@pytest.mark.parametrize("ggml_type", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_each_type_dequantizes_to_what_gguf_reads(tmp_path, llama_state, ggml_type) -> None:
    source = write_gguf(
        tmp_path / "tiny.gguf",
        "llama",
        to_gguf_tensors("llama", llama_state, LLAMA_SHAPE),
        LLAMA_HPARAMS,
        ggml_type,
    )
    summary = validate_gguf(source)
    assert summary.importable, summary.problem
    # llama.cpp's layout: norms stay F32, the 2-D weights take the file's type
    if ggml_type == Q.F32:
        expected_types = {"F32": 3 + 9 * LAYERS}
    else:
        expected_types = {"F32": 1 + 2 * LAYERS, ggml_type.name: 2 + 7 * LAYERS}
    assert summary.tensor_types == expected_types

    out = import_gguf(source, tmp_path / "hf", "float32")

    weights = read_safetensors(out / "model.safetensors")
    reference = gguf_reader_values(source)
    assert len(weights) == len(reference) == len(llama_state)
    for i in range(LAYERS):
        # q and k come back in Hugging Face's rotary layout
        for proj, heads in (("q", HEADS), ("k", KV_HEADS)):
            key = f"blk.{i}.attn_{proj}.weight"
            reference[key] = llama_unpermute_by_index(reference[key], heads)
    for gguf_name, values in reference.items():
        hf_name = _hf_name(gguf_name)
        np.testing.assert_array_equal(weights[hf_name], values, err_msg=hf_name)
    if ggml_type == Q.F32:  # nothing lost on the way: the original weights, bit for bit
        for hf_name, values in llama_state.items():
            np.testing.assert_array_equal(weights[hf_name], values, err_msg=hf_name)

    record = json.loads((out / "ft-import.json").read_text())
    assert record["dtype"] == "float32"
    assert record["gguf"]["tensor_types"] == expected_types
    assert not (out / "tokenizer.json").exists()  # the file has none


def _hf_name(gguf_name: str) -> str:
    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    return f"{names[parts[0]]}.{parts[1]}"


def test_k_quants_and_mixed_types_dequantize_to_what_gguf_reads(tmp_path) -> None:
    """A Q4_K_M-style file mixes types per tensor, in 256-element super-blocks. gguf-py cannot
    quantize to these, so the blocks are random bytes (with small float16 scales)."""
    width = 256
    hparams = LLAMA_HPARAMS | {
        "embedding_length": width,
        "feed_forward_length": width,
        "rope_dimension_count": width // HEADS,
    }
    rng = np.random.default_rng(2)
    state = {
        name: rng.standard_normal(
            tuple(width if d in (HIDDEN, FFN) else d for d in values.shape)
        ).astype(np.float32)
        for name, values in random_llama_state().items()
    }
    kv_rows = KV_HEADS * width // HEADS  # k and v: one head_dim of rows per key/value head
    for i in range(LAYERS):
        for proj in ("k", "v"):
            state[f"model.layers.{i}.self_attn.{proj}_proj.weight"] = rng.standard_normal(
                (kv_rows, width)
            ).astype(np.float32)
    types = [Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q3_K, Q.Q2_K, Q.IQ4_XS, Q.IQ4_NL, Q.Q5_0, Q.Q5_1]
    writer = gguf.GGUFWriter(tmp_path / "mixed.gguf", "llama")
    for key, value in hparams.items():
        getattr(writer, f"add_{key}")(value)
    used = set()
    for index, (name, values) in enumerate(to_gguf_tensors("llama", state, LLAMA_SHAPE).items()):
        if values.ndim == 1:
            writer.add_tensor(name, values)
            continue
        ggml_type = types[index % len(types)]
        used.add(ggml_type.name)
        block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        blocks = rng.integers(
            0, 256, (values.shape[0], width // block_size, type_size), dtype=np.uint8
        )
        # every f16 in a block made small and finite, so the values are numbers, not inf/NaN
        scales = blocks.view(np.float16)
        scales[...] = np.where(np.isfinite(scales), scales, 0).clip(-1, 1)
        writer.add_tensor(name, blocks.reshape(values.shape[0], -1), raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = tmp_path / "mixed.gguf"
    assert set(validate_gguf(source).tensor_types) == used | {"F32"}

    weights = read_safetensors(import_gguf(source, tmp_path / "hf") / "model.safetensors")
    for gguf_name, values in gguf_reader_values(source).items():
        if ".attn_q." in gguf_name or ".attn_k." in gguf_name:
            values = llama_unpermute_by_index(
                values, HEADS if ".attn_q." in gguf_name else KV_HEADS
            )
        assert np.isfinite(values).all() and values.std() > 0, gguf_name
        np.testing.assert_array_equal(weights[_hf_name(gguf_name)], values, err_msg=gguf_name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_outputs_round_the_float32_values(tmp_path, llama_state, dtype) -> None:
    source = write_gguf(
        tmp_path / "tiny.gguf",
        "llama",
        to_gguf_tensors("llama", llama_state, LLAMA_SHAPE),
        LLAMA_HPARAMS,
        Q.Q8_0,
    )
    full = read_safetensors(import_gguf(source, tmp_path / "f32", "float32") / "model.safetensors")
    half = read_safetensors(import_gguf(source, tmp_path / dtype, dtype) / "model.safetensors")
    config = json.loads((tmp_path / dtype / "config.json").read_text())
    assert config["dtype"] == dtype
    for name, values in full.items():
        expected = (
            values.astype(np.float16) if dtype == "float16" else float32_to_bfloat16_bits(values)
        )
        np.testing.assert_array_equal(half[name], expected, err_msg=name)


def test_bfloat16_bits_round_to_nearest_even() -> None:
    values = np.array(
        [
            1.0,
            -2.0,
            1 + 2**-8,
            1 + 3 * 2**-8,
            1 + 2**-8 + 2**-20,
            np.inf,
            -np.inf,
            np.nan,
            -0.0,
            3.4028235e38,
            1e-45,
        ],
        dtype=np.float32,
    )
    bits = float32_to_bfloat16_bits(values)
    assert bits.tolist() == [
        0x3F80,
        0xC000,
        0x3F80,
        0x3F82,
        0x3F81,
        0x7F80,
        0xFF80,
        0x7FC0,
        0x8000,
        0x7F80,
        0x0000,
    ]


def test_bfloat16_bits_match_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32)
            * 10.0 ** rng.integers(-40, 38, 100_000),
            [np.nan, np.inf, -np.inf],
        ]
    ).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = float32_to_bfloat16_bits(values)
    np.testing.assert_array_equal(ours[:-3], expected[:-3])
    # torch's vectorized cast writes NaN as 0xFFFF here; any NaN will do, so it is only a NaN
    assert torch.from_numpy(ours.view(np.int16)).view(torch.bfloat16)[-3].isnan()
    assert ours[-2:].tolist() == expected[-2:].tolist()


def test_a_failed_import_leaves_nothing_under_the_final_name(tmp_path, llama_state) -> None:
    source = write_gguf(
        tmp_path / "tiny.gguf",
        "llama",
        to_gguf_tensors("llama", llama_state, LLAMA_SHAPE),
        LLAMA_HPARAMS,
        Q.Q4_0,
    )

    def crash_midway(done: int, total: int, name: str) -> None:
        if done == total // 2:
            raise RuntimeError("disk full (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        import_gguf(source, tmp_path / "models" / "tiny", "float16", progress=crash_midway)
    assert list((tmp_path / "models").iterdir()) == []  # no folder, and no temporary left behind

    # an earlier import survives a failed re-import untouched
    first = import_gguf(source, tmp_path / "models" / "tiny", "float32")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        import_gguf(
            source, first, "bfloat16", progress=lambda *_: (_ for _ in ()).throw(KeyboardInterrupt)
        )
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny"]


def test_reimport_is_skipped_until_the_file_or_dtype_changes(tmp_path, llama_state) -> None:
    tensors = to_gguf_tensors("llama", llama_state, LLAMA_SHAPE)
    source = write_gguf(tmp_path / "tiny.gguf", "llama", tensors, LLAMA_HPARAMS, Q.Q8_0)
    out = import_gguf(source, tmp_path / "hf")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    calls: list[str] = []

    assert import_gguf(source, out, progress=lambda *args: calls.append(args[2])) == out
    assert calls == []  # nothing was converted
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp

    import_gguf(source, out, "float16", progress=lambda *args: calls.append(args[2]))
    assert len(calls) == len(tensors)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"

    write_gguf(source, "llama", tensors, LLAMA_HPARAMS, Q.Q4_0)  # re-quantized
    import_gguf(source, out, "float16")
    assert json.loads((out / "ft-import.json").read_text())["gguf"]["tensor_types"]["Q4_0"] == 16


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path, llama_state) -> None:
    source = write_gguf(
        tmp_path / "tiny.gguf",
        "llama",
        to_gguf_tensors("llama", llama_state, LLAMA_SHAPE),
        LLAMA_HPARAMS,
    )
    mine = tmp_path / "my-model"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not an earlier GGUF import"):
        import_gguf(source, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    import_gguf(source, mine, overwrite=True)
    assert not (mine / "notes.txt").exists()


def test_unsupported_architecture_and_unknown_tensors_are_named(tmp_path, llama_state) -> None:
    tensors = to_gguf_tensors("llama", llama_state, LLAMA_SHAPE)
    mamba = write_gguf(
        tmp_path / "mamba.gguf", "mamba", {"token_embd.weight": tensors["token_embd.weight"]}, {}
    )
    summary = validate_gguf(mamba)
    assert not summary.importable
    assert (
        summary.problem
        == "architecture 'mamba' cannot be imported yet (supported: gemma2, gpt2, llama, phi3, qwen2, qwen3)"
    )
    with pytest.raises(GGUFError) as error:
        import_gguf(mamba, tmp_path / "out")
    assert str(error.value) == f"{mamba}: {summary.problem}"
    assert not (tmp_path / "out").exists()

    extra = write_gguf(
        tmp_path / "extra.gguf",
        "llama",
        tensors | {"rope_freqs.weight": np.ones(8, np.float32)},
        LLAMA_HPARAMS,
    )
    with pytest.raises(
        GGUFError,
        match=r"tensor 'rope_freqs.weight' has no Hugging Face counterpart in a LlamaForCausalLM with 2 layers \(rope_freqs",
    ):
        import_gguf(extra, tmp_path / "out")

    no_context = {k: v for k, v in LLAMA_HPARAMS.items() if k != "context_length"}
    for hparams, extra, problem in [
        (
            LLAMA_HPARAMS | {"block_count": 10**9},
            None,
            "llama.block_count is 1000000000 for a file of 21 tensors",
        ),
        (
            LLAMA_HPARAMS | {"head_count": 5},
            None,
            "tensor 'blk.0.attn_q.weight': 64 rows cannot be split into 5 rotary heads (num_attention_heads)",
        ),
        (
            no_context,
            lambda writer: writer.add_string("llama.context_length", "long"),
            "metadata llama.context_length is 'long', not a number",
        ),
    ]:
        bad = write_gguf(tmp_path / "bad.gguf", "llama", tensors, hparams, tokenizer=extra)
        assert validate_gguf(bad).problem == problem

    missing = dict(tensors)
    del missing["blk.1.ffn_up.weight"]
    short = write_gguf(tmp_path / "short.gguf", "llama", missing, LLAMA_HPARAMS)
    assert (
        validate_gguf(short).problem
        == "missing tensors for a LlamaForCausalLM: blk.1.ffn_up.weight"
    )


# ---- against Hugging Face models (torch + transformers) -------------------------------------


def tiny_hf_model(arch: str):
    """A tiny random Hugging Face model of `arch`, its GGUF hparams and shape facts."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 256,
        "bos_token_id": TOKENS.index("<|im_start|>"),
        "eos_token_id": TOKENS.index("<|im_end|>"),
    }
    decoder_hparams = {
        "context_length": 256,
        "embedding_length": HIDDEN,
        "block_count": LAYERS,
        "feed_forward_length": FFN,
        "head_count": HEADS,
        "head_count_kv": KV_HEADS,
        "layer_norm_rms_eps": 1e-6,
        "rope_freq_base": 10000.0,
    }
    if arch == "llama":
        config = transformers.LlamaConfig(**common, rms_norm_eps=1e-6, tie_word_embeddings=False)
        hparams = decoder_hparams | {"rope_dimension_count": HEAD_DIM}
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common, rms_norm_eps=1e-6, tie_word_embeddings=True)
        hparams = decoder_hparams
    elif arch == "qwen3":
        config = transformers.Qwen3Config(
            **common, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True
        )
        hparams = decoder_hparams | {"key_length": 32, "value_length": 32}
    elif arch == "phi3":
        config = transformers.Phi3Config(
            **common, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0
        )
        hparams = decoder_hparams | {"rope_dimension_count": HEAD_DIM}
    elif arch == "gemma2":
        config = transformers.Gemma2Config(
            **common, head_dim=HEAD_DIM, rms_norm_eps=1e-6, sliding_window=64, pad_token_id=0
        )
        hparams = decoder_hparams | {
            "key_length": HEAD_DIM,
            "value_length": HEAD_DIM,
            "sliding_window": 64,
        }
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=1024,
            bos_token_id=common["bos_token_id"],
            eos_token_id=common["eos_token_id"],
        )
        hparams = {
            "context_length": 1024,
            "embedding_length": HIDDEN,
            "block_count": LAYERS,
            "feed_forward_length": 4 * HIDDEN,
            "head_count": HEADS,
            "layer_norm_eps": 1e-5,
        }
    else:
        raise AssertionError(arch)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at exactly one (zero for Gemma): make them say something
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model, hparams


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gpt2"])
def test_architectures_round_trip_and_match_transformers_gguf_loading(tmp_path, arch) -> None:
    model, hparams = tiny_hf_model(arch)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = {
        k: v.numpy()
        for k, v in model.state_dict().items()
        if not (model.config.tie_word_embeddings and k == "lm_head.weight")
    }
    shape = {"layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS}
    source = write_gguf(
        tmp_path / f"{arch}.gguf",
        arch,
        to_gguf_tensors(arch, state, shape),
        hparams,
        tokenizer=byte_level_tokenizer,
    )
    out = import_gguf(source, tmp_path / arch, "float32", max_shard_bytes=200_000)

    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1  # sharded, with an index
    imported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(imported) is type(model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "is the the"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        original = model(ids).logits
        ours = imported(ids).logits
    torch.testing.assert_close(ours, original, rtol=0, atol=0)  # F32 in, the same weights out

    if arch == "qwen3":
        return  # transformers' loader leaves head_dim at Qwen3Config's 128; the file says 32
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=source.name).eval()
    assert type(reference) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(reference(ids).logits, ours, rtol=0, atol=0)
    reference_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=source.name)
    for text in ["the theis", "<|im_start|>user\nhé<|im_end|>", "  x\n\ty"]:
        assert tokenizer(text)["input_ids"] == reference_tokenizer(text)["input_ids"]


def test_llama_q_and_k_are_unpermuted_as_transformers_does(llama_state) -> None:
    pytest.importorskip("torch")
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from ft_models.gguf.architectures import reverse_llama_permutation

    processor = LlamaTensorProcessor(
        config={"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS}
    )
    for name, heads in (("attn_q", HEADS), ("attn_k", KV_HEADS)):
        stored = llama_permute(
            llama_state[f"model.layers.0.self_attn.{name[-1]}_proj.weight"], heads
        )
        theirs = processor.process(stored, f"blk.0.{name}.weight").weights
        np.testing.assert_array_equal(reverse_llama_permutation(stored, heads), theirs)
        np.testing.assert_array_equal(
            theirs, llama_state[f"model.layers.0.self_attn.{name[-1]}_proj.weight"]
        )


def test_sentencepiece_tokenizer_matches_transformers_gguf_tokenizer(tmp_path, llama_state) -> None:
    """`tokenizer.ggml.model = llama` (Llama 2, Mistral): scores instead of merges, byte
    fallback, and BOS added by default."""
    pytest.importorskip("torch")  # transformers' own GGUF reader needs it
    from transformers import AutoTokenizer

    pieces = ["▁", "t", "h", "e", "i", "s", "▁t", "he", "▁the", "is", "▁is", "x", "y", "▁x"]
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *[-float(i) for i in range(len(pieces))]]
    state = dict(llama_state)
    rng = np.random.default_rng(3)
    state["model.embed_tokens.weight"] = rng.standard_normal((len(tokens), HIDDEN)).astype(
        np.float32
    )
    state["lm_head.weight"] = rng.standard_normal((len(tokens), HIDDEN)).astype(np.float32)

    def sentencepiece_tokenizer(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_chat_template(
            "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
        )

    tensors = to_gguf_tensors("llama", state, LLAMA_SHAPE)
    source = write_gguf(
        tmp_path / "spm.gguf", "llama", tensors, LLAMA_HPARAMS, tokenizer=sentencepiece_tokenizer
    )

    out = import_gguf(source, tmp_path / "hf")
    ours = AutoTokenizer.from_pretrained(out)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=source.name)
    assert ours.special_tokens_map == theirs.special_tokens_map
    for text in ["the x is y", " this", "ü and \n", "</s> the"]:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
    assert ours("the")["input_ids"][0] == 1  # BOS, as llama.cpp adds it
    chat = [{"role": "user", "content": "is the x"}]
    assert ours.apply_chat_template(chat) == theirs.apply_chat_template(chat)


def test_missing_transformers_is_an_import_error_with_the_extra_to_install(
    tmp_path, llama_state, monkeypatch
) -> None:
    import sys

    source = write_gguf(
        tmp_path / "tiny.gguf",
        "llama",
        to_gguf_tensors("llama", llama_state, LLAMA_SHAPE),
        LLAMA_HPARAMS,
        tokenizer=byte_level_tokenizer,
    )
    monkeypatch.setitem(sys.modules, "transformers.tokenization_utils_tokenizers", None)
    with pytest.raises(ImportError, match=r'pip install "ft-models\[torch\]"'):
        import_gguf(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


@pytest.mark.parametrize(
    ("hparams", "problem"),
    [
        (
            {"head_count_kv": 4},
            "tensor 'blk.0.attn_k.weight' has shape [32, 64] but the metadata "
            "(head_count_kv*head_dim=64, embedding_length=64) makes it [64, 64]",
        ),
        (
            {"feed_forward_length": 96},
            "tensor 'blk.0.ffn_gate.weight' has shape [128, 64] but the metadata "
            "(feed_forward_length=96, embedding_length=64) makes it [96, 64]",
        ),
        (
            {"vocab_size": VOCAB + 8},
            f"tensor 'token_embd.weight' has shape [{VOCAB}, 64] but the metadata "
            f"(vocab_size={VOCAB + 8}, embedding_length=64) makes it [{VOCAB + 8}, 64]",
        ),
    ],
)
def test_metadata_that_contradicts_the_tensors_is_refused_before_anything_is_written(
    tmp_path, llama_state, hparams, problem
) -> None:
    tensors = to_gguf_tensors("llama", llama_state, LLAMA_SHAPE)
    bad = write_gguf(tmp_path / "bad.gguf", "llama", tensors, LLAMA_HPARAMS | hparams)
    assert validate_gguf(bad).problem.startswith(problem)
    written = []
    with pytest.raises(GGUFError) as error:
        import_gguf(bad, tmp_path / "out", progress=lambda *a: written.append(a))
    assert str(error.value) == (
        f"{bad}: {problem}: the file contradicts itself, so it is not imported; "
        "convert the model again"
    )
    assert written == []  # refused before the first tensor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_an_import_error_names_the_file_once(tmp_path, monkeypatch) -> None:
    from ft_models.describe import describe_model
    from ft_models.resolve import ModelError, import_gguf_cached

    monkeypatch.setenv("FT_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    reason = "truncated file: 15 bytes is shorter than a GGUF header (24) (at byte 0)"
    with pytest.raises(ModelError) as error:
        import_gguf_cached(bad, progress=False)
    assert str(error.value) == f"{bad}: cannot import this GGUF file: {reason}"
    with pytest.raises(ModelError) as error:
        describe_model(str(bad))
    assert str(error.value) == f"{bad}: not a readable GGUF file: {reason}"
