"""Parity with the torch trainer: the same tiny Llama (one safetensors folder), data, seed and
settings, trained 20 steps by TorchTrainer and by MLXTrainer, give the same loss curve.

The LoRA weights start equal: torch's initial adapter is the step-0 checkpoint of a torch run
stopped before its first step (the same seed draws the same weights), and MLX starts from it
(`MLXTrainer(initial_adapter=...)`). Both use AdamW with bias correction in fp32, the same
batches (ft-data's seeded order) and the same constant-after-warmup schedule.
"""

from __future__ import annotations

import numpy as np
import pytest

from ft_train_mlx import MLXTrainer

# Measured here: the curves differ by at most 1.9e-6 over 20 steps (float32 round-off in
# different kernels); 1e-4 leaves room for other BLAS builds and still fails on a real
# difference: MLX's default AdamW (no bias correction) is checked below to miss it.
TOLERANCE = 1e-4
SETTINGS = {
    "validation": False,
    "training__max_steps": 20,
    "training__precision": "fp32",
    "training__warmup_steps": 2,
    "training__lr_scheduler": "cosine",
    "training__max_grad_norm": 1.0,
    "training__weight_decay": 0.01,
    "training__learning_rate": 2e-3,
    "training__save_every": 100,
}


def test_torch_and_mlx_loss_curves_agree(make_job, monkeypatch) -> None:
    torch_trainer = pytest.importorskip("ft_train_torch").TorchTrainer()
    # torch's initial adapter: a run stopped before its first step checkpoints step 0
    init_job = make_job(run="torch-init", **SETTINGS)
    result = torch_trainer.train(init_job, emit=lambda e: None, should_stop=lambda: True)
    assert (result.reason, result.step) == ("interrupted", 0)
    initial = init_job.checkpoints_dir / "step-00000000"

    torch_events: list[dict] = []
    torch_trainer.train(
        make_job(run="torch", **SETTINGS), emit=torch_events.append, should_stop=lambda: False
    )
    mlx_events: list[dict] = []
    MLXTrainer(initial_adapter=initial).train(
        make_job(run="mlx", **SETTINGS), emit=mlx_events.append, should_stop=lambda: False
    )
    curves = [
        [(e["loss"], e["learning_rate"], e["tokens"]) for e in events if e["type"] == "step"]
        for events in (torch_events, mlx_events)
    ]
    assert len(curves[0]) == len(curves[1]) == 20
    torch_loss, mlx_loss = (np.array([c[0] for c in curve]) for curve in curves)
    print("largest step loss difference", np.abs(torch_loss - mlx_loss).max())
    np.testing.assert_allclose(mlx_loss, torch_loss, atol=TOLERANCE, rtol=0)
    assert [c[2] for c in curves[0]] == [c[2] for c in curves[1]]  # the same batches
    assert [c[1] for c in curves[1]] == pytest.approx([c[1] for c in curves[0]], rel=1e-12)
    assert torch_loss[-1] < torch_loss[0]  # it learnt something: the curves are not flat

    # the check can fail: without torch's bias correction (MLX's default) the curves part
    import mlx.optimizers

    import ft_train_mlx.trainer as trainer_module

    def uncorrected(settings):
        return mlx.optimizers.AdamW(
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay
        )

    monkeypatch.setattr(trainer_module, "build_optimizer", uncorrected)
    other: list[dict] = []
    MLXTrainer(initial_adapter=initial).train(
        make_job(run="mlx-uncorrected", **SETTINGS), emit=other.append, should_stop=lambda: False
    )
    other_loss = np.array([e["loss"] for e in other if e["type"] == "step"])
    assert np.abs(other_loss - torch_loss).max() > 10 * TOLERANCE


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_torch_and_mlx_preference_losses_agree(make_job, objective: str) -> None:
    """DPO and ORPO (`method.objective`) on the same preference pairs, from the same initial
    adapter: torch's and MLX's losses agree to 1e-4 at each of 10 steps, and so do the
    preference metrics."""
    torch_trainer = pytest.importorskip("ft_train_torch").TorchTrainer()
    settings = {**SETTINGS, "training__max_steps": 10, "method__objective": objective}
    init_job = make_job(run="torch-init", **settings)
    torch_trainer.train(init_job, emit=lambda e: None, should_stop=lambda: True)
    initial = init_job.checkpoints_dir / "step-00000000"
    runs: list[list[dict]] = [[], []]
    torch_trainer.train(
        make_job(run="torch", **settings), emit=runs[0].append, should_stop=lambda: False
    )
    MLXTrainer(initial_adapter=initial).train(
        make_job(run="mlx", **settings), emit=runs[1].append, should_stop=lambda: False
    )
    keys = ("loss", "rewards_chosen", "rewards_rejected", "margin")
    curves = [np.array([[e[k] for k in keys] for e in r if e["type"] == "step"]) for r in runs]
    assert curves[0].shape == curves[1].shape == (10, len(keys))
    print(objective, "largest difference", np.abs(curves[0] - curves[1]).max(axis=0))
    np.testing.assert_allclose(curves[1], curves[0], atol=TOLERANCE, rtol=0)
    assert curves[0][-1, 0] < curves[0][0, 0]  # it learnt: the curves are not flat
