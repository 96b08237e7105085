"""A run's plan (ft_train_core.plan): the batches `batch_size: auto` picks, the memory check that
refuses a fixed batch that cannot fit, the steps it counts, and its advice."""

from __future__ import annotations

import numpy as np
import pytest

from ft_config import load_config
from ft_models.catalog import find_entry
from ft_train_core.batch_plan import BatchPlan, DatasetSize, count_steps
from ft_train_core.plan import MemoryBudget, PlanRefused, auto_tokens_per_step, make_plan

SMOLLM2 = find_entry("smollm2-135m").shape
GB = 10**9


def config(*overrides: str):
    return load_config(text="profile: chat\n", overrides=overrides)


def persona_sized(examples: int = 95, length: int = 57) -> DatasetSize:
    """About what a user's first persona file is: a hundred short chats."""
    lengths = np.full(examples, length)
    lengths[::7] += 31  # some longer ones
    return DatasetSize(lengths=lengths, trained_tokens=int(lengths.sum() * 0.3), mode="pack")


def plan(cfg, data, limit_gb: float, **kwargs):
    return make_plan(
        cfg,
        data,
        SMOLLM2,
        budget=MemoryBudget(int(limit_gb * GB), "the test's limit"),
        device=kwargs.pop("device", "cpu"),
        precision=kwargs.pop("precision", "fp32"),
        **kwargs,
    )


def test_auto_tokens_per_step_follows_the_dataset_size() -> None:
    # The run's tokens / 128, as a power of two, in [256, 16384], never under the longest row.
    assert auto_tokens_per_step(5_387, 3, 88) == 256  # a hundred short chats: the floor
    assert auto_tokens_per_step(150_000, 3, 600) == 4096  # Alpaca's demo sample
    assert auto_tokens_per_step(20_000_000, 3, 2048) == 16_384  # the ceiling
    assert auto_tokens_per_step(1_000, 1, 1_500) == 1_500  # a row must hold the longest


def test_small_dataset_gets_short_rows_and_enough_steps() -> None:
    """A user's ~100-row file with the chat profile: rows of 256 tokens, one per step, and
    more optimizer steps than the warning threshold, where 4 rows of 2,048 gave 3."""
    data = persona_sized()
    result = plan(config(), data, 20)
    assert result.batch == BatchPlan("pack", 256, 1, 1)
    assert result.tokens_per_step == 256
    assert result.optimizer_steps >= 30 and not result.warnings
    fixed = plan(config("training.batch_size=4"), data, 200)
    assert fixed.batch == BatchPlan("pack", 2048, 4, 1)
    assert fixed.optimizer_steps == 3  # 3 packed rows an epoch: one step of 4 rows, 3 epochs
    assert fixed.warnings and "only 3 optimizer step(s)" in fixed.warnings[0]
    assert "training.batch_size: auto" in fixed.warnings[0]


def test_a_fixed_batch_that_cannot_fit_is_refused_with_the_figures() -> None:
    data = DatasetSize(lengths=np.full(400, 300), trained_tokens=60_000, mode="pack")
    cfg = config("training.batch_size=4")
    needed = plan(cfg, data, 1_000).estimate.total_bytes
    with pytest.raises(PlanRefused) as refused:
        plan(cfg, data, needed / GB)  # the limit is the estimate: over the 85% kept
    message = str(refused.value)
    assert message.startswith(
        f"the run does not fit in memory: a micro-batch of 4 row(s) of 2,048 tokens needs "
        f"about {needed / GB:.1f} GB at the peak (activations"
    )
    assert "this process may use" in message and "the test's limit" in message
    assert "training.batch_size: auto" in message
    assert "training.batch_size: 1 and training.gradient_accumulation_steps: 4" in message
    assert "training.gradient_checkpointing: true" in message


def test_auto_splits_the_micro_batch_and_keeps_the_tokens_per_step() -> None:
    """Where 4 rows of 2,048 do not fit, `auto` takes fewer rows per micro-batch and
    accumulates: the tokens per optimizer step stay 8,192, on a GPU-sized limit as on a CPU."""
    data = DatasetSize(lengths=np.full(4_000, 300), trained_tokens=600_000, mode="pack")
    cfg = config("training.tokens_per_step=8192")
    roomy = plan(cfg, data, 1_000, device="cuda:0")
    assert roomy.batch == BatchPlan("pack", 2048, 4, 1)
    two_rows = BatchPlan("pack", 2048, 2, 1)
    limit = _estimate_of(cfg, data, two_rows) / 0.85 / GB + 0.01
    tight = plan(cfg, data, limit, device="cuda:0")
    assert tight.batch == BatchPlan("pack", 2048, 2, 2)
    assert tight.tokens_per_step == roomy.tokens_per_step == 8192
    assert tight.estimate.total_bytes < roomy.estimate.total_bytes
    # On a CPU a micro-batch stops growing where it stops paying (2,048 tokens).
    assert plan(cfg, data, 1_000).batch == BatchPlan("pack", 2048, 1, 4)


def _estimate_of(cfg, data, batch) -> int:
    result = make_plan(
        cfg,
        data,
        SMOLLM2,
        budget=MemoryBudget(10**15, "test"),
        device="cuda:0",
        precision="fp32",
        resumed=batch,
    )
    return result.estimate.total_bytes


def test_one_row_that_cannot_fit_says_what_to_change() -> None:
    data = DatasetSize(lengths=np.full(10, 2000), trained_tokens=10_000, mode="pack")
    with pytest.raises(PlanRefused, match="one row of 2,048 tokens needs about") as refused:
        plan(config(), data, 1.0)
    assert "training.gradient_checkpointing" in str(refused.value)


def test_steps_are_counted_as_the_trainers_count_them(tmp_path) -> None:
    """`count_steps` over lengths alone gives what the loop gets from the prepared file."""
    from ft_data.batches import Batches
    from ft_data.hdf5 import PreparedDataset, PreparedWriter
    from ft_train_core.schedule import run_length

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, 500)
    with PreparedWriter(tmp_path / "d.h5", {"cache_key": "k"}) as writer:
        for n in lengths:
            writer.add(np.ones(n, dtype=np.int32), np.ones(n, dtype=np.uint8))
    cfg = config("training.epochs=2.5", "training.seed=3")
    for batch in (BatchPlan("pack", 512, 3, 2), BatchPlan("pad", 300, 4, 3)):
        with PreparedDataset(tmp_path / "d.h5") as dataset:
            real = Batches(
                dataset,
                batch_size=batch.micro_batch * 2,
                max_seq_length=batch.row_length,
                mode=batch.mode,
                seed=3,
            )
            expected = run_length(real, cfg.training, batch.accumulation)
        assert count_steps(lengths, batch, cfg.training, processes=2) == expected


def test_a_resumed_run_keeps_its_batches() -> None:
    saved = BatchPlan("pack", 1024, 3, 5)
    result = plan(config(), persona_sized(), 0.001, resumed=saved)
    assert result.batch == saved  # kept even where a fresh plan would differ or not fit


def test_settings_that_only_apply_with_auto_are_checked() -> None:
    from ft_config import ConfigError

    with pytest.raises(ConfigError, match="tokens_per_step: applies with `batch_size: auto`"):
        config("training.batch_size=4", "training.tokens_per_step=1024")
    with pytest.raises(ConfigError, match="picks the accumulation itself"):
        config("training.gradient_accumulation_steps=4")


def test_preference_pairs_are_estimated_with_both_sides_in_the_row() -> None:
    # DPO and ORPO put a pair's chosen and rejected sides in one row twice a side's length
    # (ft_train_core.plan.job_batches): the estimate counts that row, not one side's.
    data = DatasetSize(lengths=np.full(400, 300), trained_tokens=60_000, mode="pack")
    fixed = ("training.batch_size=2", "training.gradient_checkpointing=false")
    sft = plan(config(*fixed), data, 1_000).estimate
    dpo = plan(config(*fixed, "method.objective=dpo"), data, 1_000).estimate
    twice = plan(config("training.batch_size=4", fixed[1]), data, 1_000).estimate
    assert dpo.total_bytes > sft.total_bytes
    # Two sides of 2 rows hold what 4 rows of one side hold.
    assert dpo.breakdown["activations"] == twice.breakdown["activations"]
