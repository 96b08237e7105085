"""Numbers: a trainer learns, follows the schedule, and computes the same loss and update
whether the examples are packed or padded, in one batch or accumulated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ft_testing.conformance.base import ConformanceBase, adapter_tensors, step_tokens
from ft_testing.training import JobMaker, losses


class LearningTests(ConformanceBase):
    """It learns; the schedule; packing equals padding; accumulation equals one big batch."""

    def test_it_learns(self, make_job: JobMaker) -> None:
        """A high rate: the loss falls well below its start (ln 512 = 6.24). The tiny model's
        random lm_head caps its logits near +-1 whatever the layers below do, so the adapter
        includes it."""
        run = self.train(
            make_job(
                validation=False,
                method__target_modules=["q_proj", "v_proj", "lm_head"],
                method__rank=8,
                training__learning_rate=1e-2,
                training__max_steps=40,
                training__save_every=100,
            )
        )
        curve = losses(run.events)
        assert run.result.reason == "max_steps" and len(curve) == 40
        assert curve[0] > 6.0 and sum(curve[-8:]) / 8 < curve[0] - 1.0

    @pytest.mark.parametrize(
        ("warmup", "rates"),
        [
            ({"training__warmup_ratio": 0.5}, [1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3]),
            ({"training__warmup_steps": 1}, [5e-4, 1e-3, 1e-3 * 0.75, 1e-3 * 0.25]),
        ],
    )
    def test_warmup_and_cosine_schedule(
        self, make_job: JobMaker, warmup: dict[str, Any], rates: list[float]
    ) -> None:
        settings = {"training__warmup_steps": None, **warmup}
        run = self.train(
            make_job(
                validation=False,
                training__max_steps=4,
                training__batch_size=1,
                training__lr_scheduler="cosine",
                **settings,
            )
        )
        seen = [e["learning_rate"] for e in run.events if e["type"] == "step"]
        assert seen == pytest.approx(rates, rel=1e-6)

    def test_packing_equals_padding(self, make_job: JobMaker) -> None:
        """A step over all 32 training rows, packed into rows of max_seq_length or one example
        a row: the same loss, and after the same update, the same loss again (packed examples
        see only themselves)."""
        common = {"validation": False, "training__batch_size": 32, "training__max_steps": 2}
        padded = self.train(make_job(run="padded", data__packing=False, **common))
        packed = self.train(make_job(run="packed", data__packing=True, **common))
        assert losses(packed.events) == pytest.approx(losses(padded.events), abs=1e-5, rel=0)
        assert step_tokens(packed.events) == step_tokens(padded.events)

    @pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
    def test_accumulation_equals_one_big_batch(self, make_job: JobMaker, packing: bool) -> None:
        """2 micro-batches of 2 rows, normalised by the trained tokens of both, are one batch
        of 4: the same losses and tokens, step for step, and the same weights at the end."""
        common = {
            "validation": False,
            "data__packing": packing,
            "training__max_steps": 3,
            "training__lr_scheduler": "cosine",
            "training__warmup_steps": 1,
        }
        one = self.train(make_job(run="one", training__batch_size=4, **common))
        two = self.train(
            make_job(
                run="two", training__batch_size=2, training__gradient_accumulation_steps=2, **common
            )
        )
        assert losses(two.events) == pytest.approx(losses(one.events), abs=1e-5, rel=0)
        assert step_tokens(two.events) == step_tokens(one.events)
        a, b = (adapter_tensors(r.result.adapter_path) for r in (one, two))
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
        assert max(float(np.abs(t).max()) for n, t in a.items() if "lora_B" in n) > 1e-4
