"""Tiny random models of every architecture ft supports, built in code, offline.

Each model has 2 layers, width 64, 4 attention heads (2 key/value heads where the architecture
has grouped-query attention), an MLP of 128 and a vocabulary of 512 tokens. Weights are random
but fixed (`torch.manual_seed(0)`), so two builds write the same safetensors bytes. The folder
holds what `from_pretrained` expects: `config.json`, `model.safetensors`, the tokenizer files
and, for the causal models, a ChatML chat template.

torch, transformers and tokenizers are imported inside the functions: they come with the
`models` extra, and importing this module must stay cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "phi",
    "phi3",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gpt2",
    "gptj",
    "bert",
)
"""Every architecture `build_tiny_model` can build, by ft's family name (`gemma3` is Gemma 3's
text model, config.json `model_type` `gemma3_text`). All but `bert` are causal language models."""

CAUSAL_ARCHITECTURES: tuple[str, ...] = tuple(arch for arch in ARCHITECTURES if arch != "bert")

VOCAB_SIZE = 512
NUM_LAYERS = 2
HIDDEN_SIZE = 64
NUM_HEADS = 4
NUM_KV_HEADS = 2
INTERMEDIATE_SIZE = 128
MAX_POSITIONS = 512
SLIDING_WINDOW = 24
"""Gemma 2/3's local attention span: below the 32 tokens that ft_models.convert.check_logits
runs, so the window is exercised there and in training, and above the 20-token prompt every
export is checked on."""

CHAT_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BERT_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# ChatML, as SmolLM2-Instruct and Qwen2-Instruct use it: every turn is
# `<|im_start|>{role}\n{content}<|im_end|>\n`, and the generation prompt opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The text both tokenizers are trained on. Fixed, so the vocabulary (and with it every token id
# a test asserts on) never changes. Plain English with the words chat and instruction data use.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are a helpful assistant. Answer the question as clearly and as briefly as you can.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
What is the capital of Italy? The capital of Italy is Rome. What is two plus two? It is four.
Write a short poem about the sea. The sea is wide and deep and blue; it sings to me and sings to you.
Translate the following sentence into French: Good morning, how are you today? Bonjour, comment allez-vous?
Summarize the text in one sentence. Explain why the sky is blue. Because sunlight is scattered by the air.
The model is trained on a dataset of questions and answers, then evaluated on examples it has not seen.
Fine-tuning adapts a pretrained language model to a new task with a small learning rate and a few epochs.
Tokens, weights, layers, heads, attention, embeddings, gradients, optimizer, scheduler, checkpoint.
def add(a, b): return a + b. for i in range(10): print(i). import numpy as np. x = [1, 2, 3]
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March, April, May.
One two three four five six seven eight nine ten. 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14
The user asked a question and the assistant gave an answer. Thank you! You're welcome. Please help me.
"""


def build_tiny_model(arch: str, path: Path) -> Path:
    """Build the tiny random `arch` model into the folder `path` and return `path`.

    The folder is created if needed. It then loads with `AutoModelForCausalLM.from_pretrained`
    (or `AutoModelForSequenceClassification`, two labels, for `bert`) and
    `AutoTokenizer.from_pretrained`; the model's vocabulary is exactly the tokenizer's.
    The same `arch` always gives the same weights. Raises `ValueError` for an unknown `arch`
    and `ImportError` when the `models` extra is missing.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    torch, transformers = _import_backends()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = _bert_tokenizer() if arch == "bert" else _chat_tokenizer()
    config = _config(arch, tokenizer)
    torch.manual_seed(0)
    if arch == "bert":
        model = transformers.BertForSequenceClassification(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _import_backends() -> tuple[Any, Any]:
    try:
        import tokenizers  # noqa: F401
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(
            f"tiny models need torch, transformers and tokenizers ({error.name} is missing): "
            'pip install "ft-testing[models]"'
        ) from error
    return torch, transformers


def _chat_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # bos and pad are <|endoftext|>; eos is <|im_end|>, the token that ends an assistant turn, as
    # in ChatML instruct models. Keeping pad apart from eos lets a trainer mask padding by id
    # without also masking the end of every answer.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def _bert_tokenizer() -> Any:
    """A lower-casing WordPiece tokenizer that frames inputs as `[CLS] a [SEP] (b [SEP])`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _wordpiece_vocab()
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
        # BERT tells the two segments of a pair apart with token type ids.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _wordpiece_vocab() -> dict[str, int]:
    """`VOCAB_SIZE` WordPiece tokens: the special tokens, every character of the corpus alone and
    as a `##` continuation, then the corpus' most frequent words, prefixes and `##` suffixes.

    Built here rather than with `tokenizers`' WordPieceTrainer, whose token ids change from one
    process to the next (it breaks ties in hash-map order).
    """
    words = re.findall(r"[a-z0-9]+|[^a-z0-9\s]", CORPUS.lower())
    chars = sorted(set("".join(words)))
    tokens = [*BERT_SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars if c.isalnum())]
    pieces: Counter[str] = Counter()
    for word in words:
        if len(word) > 1:
            pieces[word] += 1
            pieces.update(word[:i] for i in range(2, len(word)))
            pieces.update(f"##{word[i:]}" for i in range(1, len(word) - 1))
    known = set(tokens)
    ranked = sorted((p for p in pieces if p not in known), key=lambda p: (-pieces[p], p))
    tokens += ranked[: VOCAB_SIZE - len(tokens)]
    return {token: i for i, token in enumerate(tokens)}


def _config(arch: str, tokenizer: Any) -> Any:
    """The transformers config of the tiny `arch` model, sized to `tokenizer`."""
    import transformers

    ids: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    # Llama-family configs share their field names; GQA where the architecture has it.
    llama_like: dict[str, Any] = {
        **ids,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
    }
    gpt_like: dict[str, Any] = {
        **ids,
        "n_embd": HIDDEN_SIZE,
        "n_inner": INTERMEDIATE_SIZE,
        "n_layer": NUM_LAYERS,
        "n_head": NUM_HEADS,
        "n_positions": MAX_POSITIONS,
    }
    if arch == "llama":
        return transformers.LlamaConfig(**llama_like)
    if arch == "mistral":
        return transformers.MistralConfig(**llama_like, sliding_window=MAX_POSITIONS)
    if arch == "phi":
        # Phi-2's layout: one attention/MLP block in parallel, full multi-head attention,
        # rotary embeddings over half of each head (transformers' default 0.5; Phi-2 has 0.4).
        return transformers.PhiConfig(**{**llama_like, "num_key_value_heads": NUM_HEADS})
    if arch == "phi3":
        return transformers.Phi3Config(**llama_like, original_max_position_embeddings=MAX_POSITIONS)
    if arch == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if arch == "qwen3":
        # Qwen3's default head width is 128 whatever the hidden size; keep it at 64 / 4.
        return transformers.Qwen3Config(**llama_like, head_dim=HIDDEN_SIZE // NUM_HEADS)
    if arch == "gemma":
        return transformers.GemmaConfig(**llama_like, head_dim=HIDDEN_SIZE // NUM_HEADS)
    # Gemma 2/3: scores scaled by 1/sqrt(head width) as in the small Gemmas; layer 0 attends
    # through the sliding window, layer 1 to everything (Gemma 2 alternates, Gemma 3 has five
    # local layers per global one: with 2 layers, one of each). Gemma 2 keeps its soft-capping
    # of the attention scores (50) and the final logits (30).
    gemma_like: dict[str, Any] = {
        **llama_like,
        "head_dim": HIDDEN_SIZE // NUM_HEADS,
        "query_pre_attn_scalar": HIDDEN_SIZE // NUM_HEADS,
        "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    if arch == "gemma2":
        return transformers.Gemma2Config(**gemma_like)
    if arch == "gemma3":
        return transformers.Gemma3TextConfig(**gemma_like)
    if arch == "gpt2":
        return transformers.GPT2Config(**gpt_like)
    if arch == "gptj":
        # Rotary embeddings over the whole head (64 / 4 = 16 dimensions).
        return transformers.GPTJConfig(**gpt_like, rotary_dim=HIDDEN_SIZE // NUM_HEADS)
    # bert: a two-label sequence classifier; BERT has no GQA and no bos/eos.
    return transformers.BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=2,
    )
