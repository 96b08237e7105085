"""Task metrics for generated answers against reference answers, and for classification.

- exact match and token F1: SQuAD's definitions (lower-case, strip punctuation and the
  articles a/an/the, collapse whitespace; F1 over the bag of tokens);
- ROUGE-L: Google's `rouge-score` (F-measure of the longest common subsequence, Porter
  stemming), averaged over the examples;
- BLEU: `sacrebleu`'s corpus BLEU (its default 13a tokenizer), 0 to 100;
- accuracy and macro F1 for class predictions.

Every function takes plain lists of strings and returns plain floats: the figures are stored
in SQLite and JSON as they are.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = Counter(predicted) & Counter(expected)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores) if scores else 0.0


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match, token F1 and ROUGE-L (0 to 1) and BLEU (0 to 100) over the pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions) or 1
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "token_f1": sum(map(token_f1, predictions, references)) / n,
        "rouge_l": rouge_l(predictions, references),
        "bleu": bleu(predictions, references),
    }


def classification_metrics(
    predictions: Sequence[Hashable], labels: Sequence[Hashable]
) -> dict[str, float]:
    """Accuracy and macro F1 (the unweighted mean of each class's F1, over the classes that
    occur in the labels or the predictions)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    f1s = []
    for cls in sorted(set(labels) | set(predictions), key=str):
        tp = sum(p == cls and y == cls for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == cls and y != cls for p, y in zip(predictions, labels, strict=True))
        fn = sum(p != cls and y == cls for p, y in zip(predictions, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}
