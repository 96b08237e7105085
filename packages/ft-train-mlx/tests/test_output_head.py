"""The trainer's loss runs the output head on target positions only (`packing.summed_loss`): it
must compute the logits the model's own call computes, Gemma 2's final soft-capping included."""

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from ft_models.load import load_mlx
from ft_train_mlx.packing import summed_loss

TinyModelFactory = Callable[[str], Path]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_the_loss_sees_the_models_logits(arch: str, tiny_model_factory: TinyModelFactory) -> None:
    model, _ = load_mlx(tiny_model_factory(arch), dtype="float32")
    if arch == "gemma2":
        assert model.final_logit_softcapping == 30.0
        # The tiny model's logits (below 1) are far from Gemma 2's cap of 30; a cap of 0.2 bends
        # them enough for a missing cap to show.
        model.final_logit_softcapping = 0.2
    ids = mx.array([[(7 + 7919 * i) % 500 + 3 for i in range(40)]])
    index = mx.array(np.arange(39, dtype=np.int32))
    targets = ids[0, 1:]

    ours = summed_loss(model, ids, index, targets, mx.ones(39), None)
    expected = nn.losses.cross_entropy(model(ids)[0, :39], targets, reduction="sum")

    assert float(ours.item()) == pytest.approx(float(expected.item()), rel=1e-5)
    if arch == "gemma2":
        uncapped = model.model.embed_tokens.as_linear(model.model(ids))[0, :39]
        plain = nn.losses.cross_entropy(uncapped, targets, reduction="sum")
        assert abs(float(plain.item()) - float(ours.item())) > 1e-3 * float(ours.item())
