"""The tokenizer metadata of ft's GGUF files: SentencePiece-style vocabularies round-trip through
transformers' GGUF tokenizer, and the pre-tokenizer names llama.cpp knows are recognised."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from gguf import GGUFReader

from ft_export.gguf_convert import convert_to_gguf
from ft_export.gguf_vocab import pre_tokenizer_name, read_vocab


def sentencepiece_style(folder: Path, vocab_size: int) -> None:
    """A Llama-2-style tokenizer: BPE with byte fallback, `▁` for spaces, <unk> <s> </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ft_testing.tiny_models import CHATML_TEMPLATE, CORPUS

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=CHATML_TEMPLATE,
    )
    tokenizer.save_pretrained(folder)


def test_sentencepiece_vocabulary_round_trips(
    tiny_model_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_factory("llama"), model)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model / name).unlink()
    sentencepiece_style(model, vocab_size=512)
    ours = AutoTokenizer.from_pretrained(model)
    assert len(ours) == json.loads((model / "config.json").read_text())["vocab_size"]

    path = convert_to_gguf(model, tmp_path / "out" / "m.gguf", "f32").path
    reader = GGUFReader(path)
    field = reader.fields["tokenizer.ggml.model"]
    assert bytes(field.parts[field.data[0]]).decode() == "llama"
    types = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(types.parts[i][0]) for i in types.data]
    assert kinds[:4] == [2, 3, 3, 6]  # <unk> UNKNOWN, <s> and </s> CONTROL, <0x00> BYTE
    assert kinds.count(6) == 256
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in (
        "The capital of France is Paris. What is the capital of Italy?",
        "Bonjour, comment allez-vous? 3.14 ü ß",  # ü and ß are not in the corpus: byte fallback
    ):
        assert theirs(text)["input_ids"] == ours(text)["input_ids"]


def test_byte_level_vocabulary(tiny_model_factory: Callable[[str], Path]) -> None:
    vocab = read_vocab(tiny_model_factory("gpt2"), 512)
    assert vocab.model == "gpt2" and vocab.pre == "gpt2"
    assert vocab.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert vocab.special_ids == {"bos": 0, "eos": 2, "pad": 0}
    assert (vocab.add_bos, vocab.add_eos) == (False, False)
    assert vocab.merges and all(len(m.split(" ")) == 2 for m in vocab.merges)
    padded = read_vocab(tiny_model_factory("gpt2"), 520)
    assert padded.tokens[512:] == [f"[PAD{i}]" for i in range(512, 520)]
    assert set(padded.types[512:]) == {5}  # UNUSED


def test_pre_tokenizer_names() -> None:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt2"
    digits = {"type": "Digits", "individual_digits": True}
    assert (
        pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    )
    assert pre_tokenizer_name({"type": "Whitespace"}) == "default"
    assert pre_tokenizer_name(None) == "default"
