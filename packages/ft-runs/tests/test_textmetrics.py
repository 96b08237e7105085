from __future__ import annotations

import pytest

from ft_runs.textmetrics import (
    classification_metrics,
    exact_match,
    generation_metrics,
    normalize_answer,
    token_f1,
)


def test_squad_normalization_and_exact_match() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Paris", "Lyon") == 0.0


def test_token_f1() -> None:
    # prediction "paris france" vs reference "paris": precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0


def test_generation_metrics_with_rouge_and_bleu() -> None:
    same = generation_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {
        "exact_match": 1.0,
        "token_f1": 1.0,
        "rouge_l": 1.0,
        "bleu": pytest.approx(100.0),
    }
    other = generation_metrics(["a dog ran"], ["the cat sat on the mat"])
    assert other["exact_match"] == 0.0 and other["rouge_l"] == 0.0 and other["bleu"] == 0.0
    partial = generation_metrics(["the cat sat"], ["the cat sat on the mat"])
    # LCS "the cat sat": precision 3/3, recall 3/6 -> F 2/3
    assert partial["rouge_l"] == pytest.approx(2 / 3)


def test_classification_metrics() -> None:
    result = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert result["accuracy"] == 0.75
    # class a: tp 1 fp 1 fn 0 -> 2/3; class b: tp 2 fp 0 fn 1 -> 4/5
    assert result["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
