import json
from pathlib import Path

import pytest

from ft_models.memory import (
    ALLOCATOR_FACTOR,
    FRAMEWORK_BYTES,
    NF4_BYTES_PER_PARAM,
    activation_bytes_per_token,
    estimate_training_memory,
    resolve_lora_targets,
)
from ft_models.shape import ModelShape

# A hand-made Llama-like shape: 2 layers, width 64, GQA 4/2 heads of 16, MLP 128, vocab 1000.
SHAPE = ModelShape(
    family="llama",
    vocab_size=1000,
    hidden_size=64,
    num_layers=2,
    intermediate_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    tie_word_embeddings=False,
    max_position_embeddings=512,
)
# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
SMOLLM2 = ModelShape(
    family="llama",
    vocab_size=49152,
    hidden_size=576,
    num_layers=30,
    intermediate_size=1536,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
# Per layer: attention 64x64 + 2 x 64x32 + 64x64, MLP 3 x 64x128.
BLOCK_PARAMS = 2 * (4096 + 2 * 2048 + 4096 + 3 * 8192)  # 73,728
PARAMS = 2 * 1000 * 64 + (2 * 2 + 1) * 64 + BLOCK_PARAMS  # 202,048
# LoRA r=8 on every linear layer: r x (in + out) per layer, for q, k, v, o, gate, up, down.
LORA8_ALL_LINEAR = 2 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))  # 16,384


def test_weights_at_their_dtype() -> None:
    assert SHAPE.parameter_count() == PARAMS == 202_048

    lora_bf16 = estimate_training_memory(SHAPE, method="lora", dtype="bfloat16")
    lora_fp32 = estimate_training_memory(SHAPE, method="lora", dtype="fp32")
    full_fp32 = estimate_training_memory(SHAPE, method="full", dtype="float32")
    full_bf16 = estimate_training_memory(SHAPE, method="full", dtype="bf16")

    assert lora_bf16.breakdown["weights"] == 2 * PARAMS
    assert lora_fp32.breakdown["weights"] == 4 * PARAMS
    assert full_fp32.breakdown["weights"] == 4 * PARAMS
    # Mixed precision: float32 master weights and a bfloat16 working copy.
    assert full_bf16.breakdown["weights"] == 6 * PARAMS


def test_qlora_weights_are_nf4_blocks_with_their_scales() -> None:
    four = estimate_training_memory(SHAPE, method="qlora", quant_bits=4, dtype="bfloat16")
    eight = estimate_training_memory(SHAPE, method="qlora", quant_bits=8, dtype="bfloat16")

    # 0.5 byte per weight, one 8-bit absmax per 64 weights, one float32 per 256 absmaxes.
    assert NF4_BYTES_PER_PARAM == 0.5 + 1 / 64 + 4 / (64 * 256)
    quantized = BLOCK_PARAMS // 2 + BLOCK_PARAMS // 64 + BLOCK_PARAMS * 4 // (64 * 256)
    assert four.breakdown["weights"] == quantized + 2 * (PARAMS - BLOCK_PARAMS) == 294_674
    # int8: a byte per weight and a float32 scale per output row (2 layers x 640 rows).
    rows = 2 * (
        64 + 32 + 32 + 64 + 3 * 128 - 128 + 64
    )  # q, k, v, o, gate, up (128 each), down (64)
    assert eight.breakdown["weights"] == BLOCK_PARAMS + 4 * rows + 2 * (PARAMS - BLOCK_PARAMS)


def test_adapters_gradients_and_adamw_state() -> None:
    estimate = estimate_training_memory(
        SHAPE, method="lora", lora_rank=8, lora_targets="all-linear", dtype="bfloat16"
    )
    qv = estimate_training_memory(
        SHAPE, method="lora", lora_rank=8, lora_targets=["q_proj", "v_proj"]
    )
    full = estimate_training_memory(SHAPE, method="full", dtype="float32")

    assert estimate.trainable_parameters == LORA8_ALL_LINEAR == 16_384
    assert estimate.breakdown["adapters"] == 4 * LORA8_ALL_LINEAR  # float32 adapters
    assert estimate.breakdown["gradients"] == 4 * LORA8_ALL_LINEAR
    assert estimate.breakdown["optimizer"] == 2 * 4 * LORA8_ALL_LINEAR  # two float32 moments
    assert qv.trainable_parameters == 2 * 8 * ((64 + 64) + (64 + 32))
    assert full.trainable_parameters == PARAMS
    assert full.breakdown["adapters"] == 0
    assert full.breakdown["gradients"] == 4 * PARAMS
    assert full.breakdown["optimizer"] == 8 * PARAMS
    assert full.breakdown["framework"] == FRAMEWORK_BYTES


def test_logits_are_counted_in_float32_with_the_upcast() -> None:
    fp32 = estimate_training_memory(SHAPE, batch_size=2, seq_len=100, dtype="float32")
    bf16 = estimate_training_memory(SHAPE, batch_size=2, seq_len=100, dtype="bfloat16")

    entries = 2 * 100 * 1000
    assert fp32.breakdown["logits"] == int(ALLOCATOR_FACTOR * entries * 3 * 4)
    assert bf16.breakdown["logits"] == int(ALLOCATOR_FACTOR * entries * (2 + 3 * 4))


def test_total_is_the_sum_and_reads_well() -> None:
    estimate = estimate_training_memory(SMOLLM2, method="lora", batch_size=4, seq_len=256)

    assert estimate.total_bytes == sum(estimate.breakdown.values())
    assert set(estimate.breakdown) == {
        "weights",
        "adapters",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "framework",
    }
    assert estimate.to_gb() == estimate.total_bytes / 1e9
    text = estimate.describe()
    assert text.startswith("lora training, batch 4 x 256 tokens, bfloat16: about ")
    for name in estimate.breakdown:
        assert f"  {name}" in text


def test_grows_with_batch_and_sequence() -> None:
    def total(batch: int, seq: int) -> int:
        return estimate_training_memory(SMOLLM2, batch_size=batch, seq_len=seq).total_bytes

    assert total(1, 512) < total(2, 512) < total(4, 512) < total(8, 512)
    assert total(4, 128) < total(4, 256) < total(4, 1024) < total(4, 4096)


def test_checkpointing_reduces_activations() -> None:
    for method in ("lora", "full", "qlora"):
        kept = estimate_training_memory(
            SMOLLM2, method=method, seq_len=1024, gradient_checkpointing=False
        )
        recomputed = estimate_training_memory(
            SMOLLM2, method=method, seq_len=1024, gradient_checkpointing=True
        )

        assert recomputed.breakdown["activations"] < kept.breakdown["activations"] / 5
        assert recomputed.breakdown["logits"] == kept.breakdown["logits"]


def test_qlora_below_lora_below_full() -> None:
    def total(method: str) -> int:
        return estimate_training_memory(
            SMOLLM2, method=method, batch_size=2, seq_len=512
        ).total_bytes

    assert total("qlora") < total("lora") < total("full")
    assert total("lora") < total("dora")
    assert total("prefix") < total("lora")
    assert total("p-tuning") < total("full")


def test_eager_attention_keeps_the_scores() -> None:
    sdpa = activation_bytes_per_token(SMOLLM2, seq_len=2048, gradient_checkpointing=False)
    eager = activation_bytes_per_token(
        SMOLLM2, seq_len=2048, gradient_checkpointing=False, attention="eager"
    )

    # The probabilities: 30 layers x 9 heads x 2048 keys x 2 bytes per token.
    assert eager - sdpa == pytest.approx(30 * 9 * 2048 * 2, rel=0.02)


def test_bad_arguments_say_what_to_choose() -> None:
    with pytest.raises(ValueError, match="unknown method 'ia3': choose one of full, lora"):
        estimate_training_memory(SHAPE, method="ia3")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        estimate_training_memory(SHAPE, lora_targets=["c_attn"])
    with pytest.raises(ValueError, match="QLoRA quantizes the base to 4 or 8 bits"):
        estimate_training_memory(SHAPE, method="qlora", quant_bits=3)
    with pytest.raises(ValueError, match="unknown dtype"):
        estimate_training_memory(SHAPE, dtype="int8")
    assert resolve_lora_targets(SHAPE, "q_proj") == ["q_proj"]


# -- against real models ----------------------------------------------------------------------


def _tiny_llama_lora(
    folder: Path, rank: int = 8, targets: str | list[str] = "all-linear"
) -> object:
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def test_adapter_count_equals_peft_on_the_tiny_llama(tiny_llama: Path) -> None:
    shape = ModelShape.from_hf_config(json.loads((tiny_llama / "config.json").read_text()))
    model = _tiny_llama_lora(tiny_llama)

    trainable, _ = model.get_nb_trainable_parameters()
    estimate = estimate_training_memory(
        shape, method="lora", lora_rank=8, lora_targets="all-linear"
    )

    assert trainable == 16_384
    assert estimate.trainable_parameters == trainable


def test_counted_activations_match_what_autograd_saves(tiny_llama: Path) -> None:
    """The activation formula, before the allocator factor, against the bytes autograd's
    saved-tensor hooks see in one forward pass (parameters left out)."""
    import torch

    shape = ModelShape.from_hf_config(json.loads((tiny_llama / "config.json").read_text()))
    model = _tiny_llama_lora(tiny_llama, targets=["q_proj", "v_proj"])
    model.train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, seq = 2, 256
    ids = torch.randint(
        0, shape.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)

    counted = (
        batch
        * seq
        * activation_bytes_per_token(
            shape,
            method="lora",
            dtype="float32",
            lora_rank=8,
            lora_targets=["q_proj", "v_proj"],
            gradient_checkpointing=False,
        )
    )
    log_softmax = batch * seq * shape.vocab_size * 4  # the one logit copy the loss keeps
    assert sum(saved.values()) == pytest.approx(counted + log_softmax, rel=0.1)


# -- auto batch size --------------------------------------------------------------------------


# -- measured -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_measured_peak_of_a_real_step_is_near_the_estimate(tiny_llama: Path) -> None:
    """One full fine-tuning step of the tiny llama in a fresh process (docs/memory.md has the
    SmolLM2-135M runs). The tiny model's peak is mostly the framework, so this checks the
    measuring and the overall size, not the activation formula (the saved-tensor test does)."""
    from ft_models.peak_memory import measure_training_peak

    shape = ModelShape.from_hf_config(json.loads((tiny_llama / "config.json").read_text()))
    measured = measure_training_peak(tiny_llama, method="full", batch_size=4, seq_len=256, steps=2)
    estimate = estimate_training_memory(
        shape,
        method="full",
        batch_size=4,
        seq_len=256,
        dtype="float32",
        gradient_checkpointing=False,
    )

    assert measured.trainable_parameters == measured.parameters
    assert estimate.trainable_parameters == measured.parameters  # Llama has no biases
    assert 0 < measured.baseline_bytes < measured.loaded_bytes < measured.peak_bytes
    assert estimate.total_bytes == pytest.approx(measured.peak_bytes, rel=0.25)


def test_what_ft_trains_with_changes_the_estimate() -> None:
    """The terms ft's own training adds: LoRA without dropout keeps each adapted input once
    (q, k and v share one), logits exist at the trained positions only, and a float32 base
    under bfloat16 autocast keeps a bfloat16 copy of each block weight for the backward pass."""
    base = {"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False}
    dropout = estimate_training_memory(SMOLLM2, dtype="float32", **base)
    plain = estimate_training_memory(SMOLLM2, dtype="float32", lora_dropout=0.0, **base)
    assert plain.breakdown["activations"] < 0.7 * dropout.breakdown["activations"]
    half = estimate_training_memory(SMOLLM2, dtype="float32", target_fraction=0.5, **base)
    assert half.breakdown["logits"] == pytest.approx(dropout.breakdown["logits"] / 2, rel=1e-6)
    mixed = estimate_training_memory(SMOLLM2, dtype="bfloat16", weights_dtype="float32", **base)
    block = SMOLLM2.num_layers * sum(i * o for i, o in SMOLLM2.linear_layer_shapes().values())
    assert mixed.breakdown["weights"] == SMOLLM2.parameter_count() * 4 + block * 2
    with pytest.raises(ValueError, match="target_fraction"):
        estimate_training_memory(SMOLLM2, target_fraction=1.5)
