"""ft_models.fits: the catalog with its training memory, and what fits a budget."""

from __future__ import annotations

import pytest

from ft_models import fits
from ft_models.catalog import CATALOG, training_memory


def test_the_catalog_with_the_memory_of_each_method() -> None:
    rows = fits.catalog_memory(batch_size=2, seq_len=512)
    assert [row["alias"] for row in rows] == [entry.alias for entry in CATALOG]
    assert rows[0]["memory"] == training_memory(CATALOG[0].shape, batch_size=2, seq_len=512)
    assert {row["fits"] for row in rows} == {None}
    small = fits.catalog_memory(max_parameters=10**9)
    assert {row["alias"] for row in small} == {
        entry.alias for entry in CATALOG if entry.parameters <= 10**9
    }


def test_only_what_fits_the_budget() -> None:
    budget = fits.memory_budget(8 * 10**9, "--memory")
    assert budget.as_dict() == {"bytes": 8 * 10**9, "source": "--memory", "usable_bytes": 7.2e9}
    rows = fits.catalog_memory(budget=budget, method="qlora")
    expected = [e.alias for e in CATALOG if training_memory(e.shape)["qlora"] <= 7.2e9]  # type: ignore[operator]
    assert [row["alias"] for row in rows] == expected and "qwen3-8b" not in expected
    assert all(row["fits"] is True for row in rows)


def test_without_a_size_the_budget_is_this_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fits, "machine_memory", lambda: (24 * 2**30, "GPU NVIDIA RTX 4090"))
    budget = fits.memory_budget()
    assert (budget.bytes, budget.source) == (24 * 2**30, "GPU NVIDIA RTX 4090")
    assert budget.usable_bytes == int(24 * 2**30 * fits.FIT_FRACTION)
