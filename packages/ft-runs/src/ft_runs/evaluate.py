"""`ft evaluate`: how well a run's checkpoint does on held-out data, next to its base model.

For a run and one of its checkpoints (best, last, a step, or the final adapter):

1. the data: `--data PATH`, else the run's `data.test` (rows that neither trained the model nor
   picked its best checkpoint), else the run's own validation set (the held-out split or
   validation file it trained with); files are prepared with the run's tokenizer, template
   and options;
2. loss and perplexity, by the evaluator of an installed trainer (the run's backend when it is
   installed, else any: `ft_runs.trainers.evaluator_for`), the same definition as the
   trainer's `eval` events, for the fine-tuned and the base model;
3. answers: for each example, the prompt is every token before its first trained token (the
   conversation so far, through the run's own chat template, up to the opened assistant
   turn) and the reference is the first trained span (that assistant answer). Both models
   answer greedily; exact match, token F1, ROUGE-L and BLEU score the answers against the
   references (ft_runs.textmetrics);
4. the results go to `<run>/evaluations/<time>-<checkpoint>.json` and the job store's
   evaluations table, so `ft runs compare` can put runs side by side.

On preference pairs (data prepared with rejected answers: a DPO or ORPO run's validation set),
the answers are scored as above against the chosen answers, and the pairs too, by the trainer's
`evaluate_preference` on the fine-tuned and the base model: `preference_accuracy`, the share of
pairs whose chosen answer the model finds more likely than the rejected one (summed
log-probabilities), and, for the fine-tuned model, `reward_accuracy` and `reward_margin`: DPO's
implicit reward (beta x the log-probability ratio to the base) of the chosen answer against the
rejected one's. The samples show the chosen and the rejected answer next to the generated ones.

A classification run (`model.task: sequence-classification`) is scored instead by its loss per
example, accuracy and macro F1 against the data's labels, with a few examples' predicted and
true classes as samples; nothing is generated, and the base model is skipped (its
classification head is untrained, so its figures would mean nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ft_config import atomic_write_text, load_config
from ft_runs.run_folder import RunFolder
from ft_runs.textmetrics import classification_metrics, generation_metrics
from ft_train_core.samples import Example, prompt_examples

Say = Callable[[str], None]


@attrs.frozen
class Evaluation:
    run: str
    checkpoint: str
    adapter: Path
    data: str
    metrics: dict[str, float]
    base_metrics: dict[str, float]
    samples: list[dict[str, Any]]
    file: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "adapter": str(self.adapter),
            "data": self.data,
            "created": datetime.now(UTC).isoformat(),
            "metrics": self.metrics,
            "base_metrics": self.base_metrics,
            "samples": self.samples,
        }


def checkpoint_of(folder: RunFolder, which: str | None) -> tuple[str, Path]:
    """(label, adapter folder): `final` is the run's adapter; default best, else final, else
    the newest checkpoint."""
    if which in (None, ""):
        if folder.best() is not None:
            which = "best"
        elif (folder.adapter / "adapter_config.json").exists() or (
            folder.adapter / "config.json"
        ).exists():
            which = "final"
        else:
            which = "last"
    if which == "final":
        if not folder.adapter.exists():
            from ft_runs.run_folder import RunNotFoundError

            raise RunNotFoundError(
                f"run {folder.id} has no final adapter yet; use --checkpoint last"
            )
        return "final", folder.adapter
    path = folder.checkpoint(which)
    return f"{which} ({path.name})" if which in ("best", "last") else path.name, path


def examples_from(dataset: Path, tokenizer: Any, limit: int) -> list[Example]:
    """Up to `limit` (prompt, reference) pairs from a prepared dataset (see the module doc):
    the rule the trainers' evaluation samples follow too (`ft_train_core.samples`)."""
    from ft_data.hdf5 import PreparedDataset

    with PreparedDataset(dataset) as data:
        return prompt_examples(data, tokenizer, limit)


def _answer(generator: Any, ids: list[int], max_tokens: int) -> str:
    from ft_models.generate import GenerationOptions

    return str(generator.generate(ids, GenerationOptions(max_tokens=max_tokens)).text).strip()


def run_data(folder: RunFolder) -> Path | None:
    """The validation set the run trained with, if it had one."""
    info = folder.info()
    data = info.get("data", {})
    if data.get("validation_file") and Path(data["validation_file"]).exists():
        return Path(data["validation_file"])
    if data.get("validation_source"):
        from ft_data.cache import DatasetCache

        key = data.get("validation_cache_key")
        if key:
            candidate = DatasetCache().path_for(key)
            if candidate.exists():
                return candidate
    return None


def prepare_for_run(folder: RunFolder, source: str | Path, model_path: Path, say: Say) -> Path:
    """`source` prepared the way the run prepared its training data."""
    from ft_data.cache import prepare_cached
    from ft_data.config import options_from_config

    config = load_config(folder.config_file)
    # Paths in the run's config (a template file, say) are relative to its train.yml.
    started_from = folder.info().get("config_path")
    project = Path(started_from).parent if started_from else folder.path
    settings = options_from_config(config.data, config_dir=project)
    result = prepare_cached(str(Path(source).expanduser().absolute()), model_path, settings.prepare)
    say(f"data: {result.report.summary()}")
    return result.path


def evaluate_run(
    folder: RunFolder,
    *,
    checkpoint: str | None = None,
    data: str | Path | None = None,
    samples: int = 5,
    max_examples: int = 50,
    max_tokens: int = 128,
    compare_base: bool = True,
    backend: str = "auto",
    store: Any = None,
    say: Say = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """Evaluate `folder`'s checkpoint (see the module docstring)."""
    from ft_models.generate import Generator
    from ft_runs.run_lock import reading
    from ft_runs.trainers import evaluator_for

    # A trainer still running on this run does not prune the checkpoint while it is read.
    with reading(folder.path):
        info = folder.info()
        model_path = Path(info["model"]["path"])
        label, adapter = checkpoint_of(folder, checkpoint)
        test = load_config(folder.config_file).data.test
        if data is None and test:
            # data.test: scores on rows that neither trained the model nor picked its best
            # checkpoint (the validation set did that).
            started_from = folder.info().get("config_path")
            project = Path(started_from).parent if started_from else folder.path
            data = test if Path(test).is_absolute() or "://" in test else project / test
            say(f"data.test: {data}")
        if data is not None:
            dataset = prepare_for_run(folder, data, model_path, say)
            data_label = (
                "the test set (data.test)" if test and str(data).endswith(test) else str(data)
            )
        else:
            found = run_data(folder)
            if found is None:
                raise ValueError(
                    f"run {folder.id} trained without validation data: give some with --data PATH"
                )
            dataset, data_label = found, "the run's validation set"
        say(f"evaluating {folder.id} at {label} on {data_label}")
        config = load_config(folder.config_file)
        # The run's own backend when it is installed, else any that evaluates this task.
        trainer = evaluator_for(config.model.task, info.get("backend"))
        if backend == "auto":
            backend = trainer.name
        if config.model.task == "sequence-classification":
            if compare_base:
                say("base model skipped: its classification head is untrained")
            metrics, shown = _classify(trainer, model_path, adapter, dataset, samples, say)
            return _save(
                folder, Evaluation(folder.id, label, adapter, data_label, metrics, {}, shown), store
            )
        loss = trainer.evaluate_loss(
            model_path, adapter, dataset, max_seq_length=config.data.max_seq_length
        )
        metrics: dict[str, float] = {"eval_loss": loss.loss, "perplexity": loss.perplexity}
        base_metrics: dict[str, float] = {}
        if compare_base:
            base = trainer.evaluate_loss(
                model_path, None, dataset, max_seq_length=config.data.max_seq_length
            )
            base_metrics = {"eval_loss": base.loss, "perplexity": base.perplexity}
        say(
            f"validation loss {loss.loss:.4f} (perplexity {loss.perplexity:.2f}) on {loss.tokens} tokens"
            + (f"; base model {base_metrics['eval_loss']:.4f}" if base_metrics else "")
        )
        rejected = _rejected_answers(dataset, model_path)
        if rejected is not None:
            scored, base_scored = _preference(
                trainer, model_path, adapter, dataset, config.method.beta, say
            )
            metrics.update(scored)
            if compare_base:
                base_metrics.update(base_scored)

        template = info.get("data", {}).get("template")
        tuned = Generator.load(model_path, backend=backend, adapter=adapter, template=template)
        examples = examples_from(dataset, tuned.tokenizer, max_examples)
        answers: list[str] = []
        started = time.perf_counter()
        for i, example in enumerate(examples):
            answers.append(_answer(tuned, example.prompt_ids, max_tokens))
            if progress:
                progress("fine-tuned", i + 1, len(examples))
        del tuned
        references = [e.reference for e in examples]
        if examples:
            metrics.update(generation_metrics(answers, references))
        base_answers: list[str] = []
        if compare_base and examples:
            base_gen = Generator.load(model_path, backend=backend, template=template)
            for i, example in enumerate(examples):
                base_answers.append(_answer(base_gen, example.prompt_ids, max_tokens))
                if progress:
                    progress("base", i + 1, len(examples))
            base_metrics.update(generation_metrics(base_answers, references))
        say(f"answered {len(examples)} prompts in {time.perf_counter() - started:.0f} s")
        shown = [
            {
                "prompt": _last_user_text(e.prompt),
                "base": base_answers[i] if base_answers else None,
                "tuned": answers[i],
                "reference": e.reference,
                **({"rejected": rejected[e.index]} if rejected is not None else {}),
            }
            for i, e in enumerate(examples[:samples])
        ]
        result = Evaluation(folder.id, label, adapter, data_label, metrics, base_metrics, shown)
        return _save(folder, result, store)


def _rejected_answers(dataset: Path, model_path: Path) -> list[str] | None:
    """Each pair's rejected answer as text (its first trained span), for a dataset of
    preference pairs; None for other data."""
    from ft_data.hdf5 import PreparedDataset

    with PreparedDataset(dataset) as data:
        if not data.has_rejected:
            return None
        from ft_data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model_path).tokenizer
        answers = []
        for i in range(len(data)):
            tokens, mask = data.rejected(i)
            trained = np.flatnonzero(np.asarray(mask))
            start = end = int(trained[0]) if len(trained) else len(mask)
            while end < len(mask) and mask[end]:
                end += 1
            ids = [int(t) for t in tokens[start:end]]
            answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        return answers


def _preference(
    trainer: Any, model_path: Path, adapter: Path, dataset: Path, beta: float, say: Say
) -> tuple[dict[str, float], dict[str, float]]:
    """(fine-tuned, base) metrics of preference pairs (see the module docstring)."""
    score = getattr(trainer, "evaluate_preference", None)
    if score is None:
        say(f"preference accuracy not scored: the {trainer.name} trainer does not compute it")
        return {}, {}
    tuned = score(model_path, adapter, dataset)
    base = score(model_path, None, dataset)
    margins = (np.asarray(tuned.chosen_logps) - base.chosen_logps) - (
        np.asarray(tuned.rejected_logps) - base.rejected_logps
    )
    metrics = {
        "preference_accuracy": tuned.accuracy,
        "reward_accuracy": float(np.mean(margins > 0)) if len(margins) else float("nan"),
        "reward_margin": float(beta * np.mean(margins)) if len(margins) else float("nan"),
    }
    say(
        f"preference accuracy {tuned.accuracy:.4f} on {len(margins)} pairs (base model "
        f"{base.accuracy:.4f}); DPO reward accuracy {metrics['reward_accuracy']:.4f}"
    )
    return metrics, {"preference_accuracy": base.accuracy}


def _save(folder: RunFolder, result: Evaluation, store: Any) -> Evaluation:
    """Write `result` into the run's evaluations folder (and the job store, when given)."""
    label, metrics, base_metrics = result.checkpoint, result.metrics, result.base_metrics
    target = (
        folder.path
        / "evaluations"
        / (datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{label.split(' ')[0]}.json")
    )
    target.parent.mkdir(exist_ok=True)
    atomic_write_text(target, json.dumps(result.to_dict(), indent=2) + "\n")
    if store is not None:
        store.add_evaluation(
            folder.id,
            checkpoint=label,
            data=result.data,
            metrics={**metrics, **{f"base_{k}": v for k, v in base_metrics.items()}},
            file=target,
        )
    return attrs.evolve(result, file=target)


def _classify(
    trainer: Any, model_path: Path, adapter: Path, dataset: Path, samples: int, say: Say
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, samples) of a sequence classifier on a prepared dataset with labels."""
    scored = trainer.evaluate_classification(model_path, adapter, dataset)
    metrics = {
        "eval_loss": scored.loss,
        **classification_metrics(scored.predictions, scored.labels),
    }
    say(
        f"validation loss {scored.loss:.4f}, accuracy {metrics['accuracy']:.4f}, macro F1 "
        f"{metrics['macro_f1']:.4f} on {len(scored.labels)} examples"
    )
    shown: list[dict[str, Any]] = []
    if samples:
        from ft_data.hdf5 import PreparedDataset
        from ft_data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model_path).tokenizer
        with PreparedDataset(dataset) as data:
            for i in range(min(samples, len(data))):
                tokens, _ = data[i]
                text = tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)
                shown.append(
                    {
                        "prompt": text.strip(),
                        "base": None,
                        "tuned": scored.predictions[i],
                        "reference": scored.labels[i],
                    }
                )
    return metrics, shown


def _last_user_text(prompt: str) -> str:
    """The prompt as people read it: the text of the last turn before the answer, without the
    template's markup where it is recognisable (ChatML, Llama 3, Mistral), else all of it."""
    import re

    for pattern in (
        r"<\|im_start\|>user\n(.*?)<\|im_end\|>",
        r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
        r"\[INST\](.*?)\[/INST\]",
        r"### Instruction:\n(.*?)\n\n### Response:",
    ):
        found = re.findall(pattern, prompt, flags=re.S)
        if found:
            return found[-1].strip()
    return prompt.strip()
