"""`ft train`: a train.yml in, a fine-tuned adapter (or model) out.

The work is ft_runs.training.train; this module turns its messages and events into what a
person sees (progress bars, the loss trend) and its errors into `error: ...` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting, e.g. --set training.learning_rate=1e-4 (repeatable).",
)
@click.option(
    "--profile", help="Start from a profile's defaults (chat, instruction, code, domain...)."
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN]",
    help="Continue RUN (id, id prefix; alone: the latest run) from its newest valid checkpoint.",
)
@click.option("--force", is_flag=True, help="Resume even though the config or data changed.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "mlx"]),
    help="Shorthand for --set training.backend=...",
)
@click.option(
    "--nproc-per-node",
    "--nproc",
    "nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes on this machine (torch: torchrun DDP; MLX: mlx.launch).",
)
@click.option(
    "--strategy",
    type=click.Choice(["ddp", "fsdp"]),
    help="torch with several processes: replicate the model (ddp) or shard it (fsdp). "
    "Shorthand for --set resources.strategy=...",
)
@click.option(
    "--nnodes", type=click.IntRange(min=1), default=1, help="Machines taking part (torch)."
)
@click.option(
    "--node-rank", type=click.IntRange(min=0), default=0, help="This machine's rank (torch)."
)
@click.option("--master-addr", default="127.0.0.1", help="Rank 0's address (torch).")
@click.option("--master-port", type=int, default=29500, help="Rank 0's port (torch).")
@click.option(
    "--hostfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="MLX: the hosts file for mlx.launch (several Macs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON at the end.")
def train(
    config: Path | None,
    overrides: tuple[str, ...],
    profile: str | None,
    resume: str | None,
    force: bool,
    backend: str | None,
    nproc: int,
    strategy: str | None,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    hostfile: Path | None,
    as_json: bool,
) -> None:
    """Fine-tune a model as CONFIG (default: ./train.yml) says.

    \b
    ft train                         # ./train.yml
    ft train job.yml --set training.max_steps=50
    ft train --resume                # continue the latest run
    ft train --nproc-per-node 2      # two processes (DDP on torch)
    ft train --nproc 2 --strategy fsdp   # weights and optimizer sharded (FSDP2)
    """
    import json
    import logging

    from rich.console import Console

    from ft_cli.main import UserError, quiet_libraries
    from ft_cli.progress import PrepareProgress, TrainDisplay
    from ft_config import ConfigError
    from ft_data.errors import DataError
    from ft_models.memory_watchdog import MemoryLimitReached
    from ft_runs.launching import StoppedBeforeTraining
    from ft_runs.run_lock import RunLocked
    from ft_runs.store import RunNotFound
    from ft_runs.trainers import TrainerNotAvailable
    from ft_runs.training import ResumeRefused
    from ft_runs.training import train as run_training
    from ft_train_core.protocol import Launch

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    log = logging.getLogger("ft_cli.train")
    quiet_libraries()
    if config is None and Path("train.yml").exists():
        config = Path("train.yml")
    if config is not None and not config.exists():
        raise UserError(f"{config}: no such file (`ft init` writes a train.yml)")
    if config is None and resume is None:
        raise UserError(
            "no train.yml here: pass one (`ft train path/to/train.yml`), or run `ft init` first"
        )
    if backend:
        overrides = (*overrides, f"training.backend={backend}")
    if strategy:
        overrides = (*overrides, f"resources.strategy={strategy}")

    def say(text: str) -> None:
        # The library's messages are plain text: `pip install "ft-runs[wandb]"` must keep its
        # brackets, which rich would read as markup. What it decided and why goes to the log too.
        console.print(text, markup=False)
        log.info("%s", text)

    launch = Launch(
        nproc=nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        hostfile=hostfile,
    )
    prepare_progress = PrepareProgress(console)
    display = TrainDisplay(console, preparing=prepare_progress)
    try:
        outcome = run_training(
            config,
            overrides=overrides,
            profile=profile,
            resume=resume,
            force=force,
            say=say,
            display=display,
            progress=prepare_progress,
            launch=launch,
        )
    except (
        ConfigError,
        DataError,
        ResumeRefused,
        RunLocked,
        RunNotFound,
        TrainerNotAvailable,
    ) as exc:
        raise UserError(str(exc)) from None
    except (ValueError, ImportError) as exc:
        # The trainers raise these for settings that cannot work here (a method this device
        # lacks, a missing backend): the message says what to change.
        raise UserError(str(exc)) from None
    except MemoryLimitReached as exc:
        # The memory watchdog stopped a step before the kernel's out-of-memory killer would.
        raise UserError(str(exc)) from None
    except StoppedBeforeTraining as exc:
        # Ctrl-C or SIGTERM while the model loaded or the data prepared: nothing to resume.
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        raise UserError(
            "stopped at once (second Ctrl-C): resume with `ft train --resume`"
        ) from None
    finally:
        prepare_progress.stop()
        display.progress.stop()
    result = outcome.result
    summary: dict[str, Any] = {
        "run": outcome.run_id,
        "status": outcome.status,
        "reason": result.reason,
        "step": result.step,
        "folder": str(outcome.folder.path),
        "adapter": str(result.adapter_path) if result.adapter_path else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "metrics": result.metrics,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        style = {"completed": "green", "interrupted": "yellow"}.get(outcome.status, "red")
        console.print(
            f"[{style}]{outcome.status}[/] ({result.reason}) at step {result.step}: "
            f"run {outcome.run_id}"
        )
        if result.adapter_path:
            console.print(f"  adapter  {result.adapter_path}")
        if result.best_checkpoint:
            console.print(f"  best     {result.best_checkpoint}")
        if outcome.status == "interrupted":
            console.print(f"  resume   ft train --resume {outcome.run_id}")
        else:
            console.print(
                f"  next     ft runs show {outcome.run_id} · ft chat --run {outcome.run_id}"
                f" · ft export {outcome.run_id} --format gguf"
            )
    if outcome.status == "failed":
        raise SystemExit(1)
