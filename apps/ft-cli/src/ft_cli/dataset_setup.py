"""The options every `ft dataset` command shares, and what they resolve to: the data, the
settings and the model's tokenizer.

Settings precedence, in this one place: options over train.yml (`-c FILE`, else ./train.yml
when there is one) over train.yml's defaults. The model is named as `ft train` names it: a
local folder (one that holds tokenizer.json is enough to tokenize), a catalog alias, a Hub
repo id or a `.gguf` file, resolved by `ft_models.resolve.resolve_model` with the same
revision, remote-code setting and HF token; by default train.yml's `model.name`, else
ft's default model (the embedded SmolLM2).

ft-config, ft-data and ft-models are imported inside the functions: `ft --help` loads this.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ft_config import ModelConfig
    from ft_data import DataSettings, ModelTokenizer

CONFIG_FILE = "train.yml"  # read from the current folder when -c is not given


@dataclass(frozen=True)
class DataArgs:
    """The options every `ft dataset` command shares (see :func:`data_options`)."""

    src: str | None
    config_path: Path | None
    model: str | None
    tokenizer: Path | None
    fmt: str | None
    template: str | None
    max_seq_length: int | None
    as_json: bool

    def setup(self, **overrides: Any) -> Setup:
        """The source, settings and tokenizer these options (and ``overrides`` of train.yml's
        data section, e.g. ``label_column``; None: not given) name."""
        return resolve_setup(self, **overrides)


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """SRC, `-c train.yml`, the model or tokenizer, the settings that override train.yml's,
    `--json`; the command receives them as one :class:`DataArgs` argument, ``data``."""
    options = [
        click.argument("src", required=False),
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="Take the data settings (and the model) from this train.yml "
            "(default: ./train.yml when there is one).",
        ),
        click.option(
            "--model",
            metavar="NAME_OR_PATH",
            help="The model whose tokenizer and chat template to use: a folder, a catalog "
            "alias, a Hugging Face repo id or a .gguf file (default: train.yml's model, else "
            "smollm2-135m).",
        ),
        click.option(
            "--tokenizer",
            type=click.Path(exists=True, path_type=Path),
            help="A folder with tokenizer.json (or the file); wins over --model.",
        ),
        click.option("--format", "fmt", metavar="FORMAT", help="Data format (default: detected)."),
        click.option(
            "--template",
            metavar="NAME_OR_FILE",
            help="Chat template: alpaca, chatml, llama3, mistral or a .jinja file "
            "(default: the tokenizer's).",
        ),
        click.option(
            "--max-seq-length", type=click.IntRange(min=8), help="Longest sequence in tokens."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]
    names = [field.name for field in dataclasses.fields(DataArgs)]

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        data = DataArgs(**{name: kwargs.pop(name) for name in names})
        return func(data, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class Setup:
    """What a command works on: the source, the settings, the tokenizer, and the model's name
    as given (a folder, alias, repo id or file)."""

    source: str
    settings: DataSettings
    tokenizer: ModelTokenizer
    model: str
    url_token: str | None = None
    """passwords.yml's (or $FT_DATA_TOKEN's) data_token, for an http(s) source."""


def resolve_setup(args: DataArgs, **overrides: Any) -> Setup:
    """The data, settings and tokenizer ``args`` name (see the module docstring)."""
    import attrs

    from ft_config import DataConfig, ModelConfig, load_config
    from ft_data import options_from_config

    config_path = args.config_path
    if config_path is None and Path(CONFIG_FILE).is_file():
        config_path = Path(CONFIG_FILE)
    if config_path is not None:
        config = load_config(config_path)
        data, model_config, base = config.data, config.model, config_path.parent
    else:
        data, model_config, base = DataConfig(), ModelConfig(), Path.cwd()
    changes: dict[str, Any] = {}
    if args.fmt is not None:
        changes["format"] = args.fmt
    if args.template is not None:  # a file named on the command line is relative to here
        template = Path(args.template)
        changes["template"] = str(template.absolute()) if template.is_file() else args.template
    if args.max_seq_length is not None:
        changes["max_seq_length"] = args.max_seq_length
    changes.update({key: value for key, value in overrides.items() if value is not None})
    settings = options_from_config(attrs.evolve(data, **changes), config_dir=base)
    src = args.src
    if src is None:
        if config_path is None:
            raise click.UsageError("give the data (SRC), or -c train.yml to use its data.train")
        src = settings.train
    if args.tokenizer is not None:
        name, origin = str(args.tokenizer), None
    elif args.model is not None:
        name, origin = args.model, None
    else:  # train.yml's model; a relative folder there is relative to train.yml
        name = model_config.name
        if config_path is not None and (base / name).is_dir():
            name = str(base / name)
        origin = (
            f"model.name of {config_path}"
            if config_path is not None
            else f"the default: no --model, and no {CONFIG_FILE} here"
        )
    tokenizer = model_tokenizer(name, model_config, base, origin)
    url_token = None
    if str(src).startswith(("http://", "https://")):
        from ft_config import PASSWORDS_FILE, load_secrets

        secret = load_secrets(base / PASSWORDS_FILE).get("data_token")
        url_token = secret.reveal() if secret is not None else None
    return Setup(src, settings, tokenizer, name, url_token)


def model_tokenizer(
    name: str, model_config: ModelConfig, project: Path, origin: str | None
) -> ModelTokenizer:
    """The tokenizer of the model ``name``: a tokenizer.json file, a folder that holds one, or
    whatever `ft train` would train (`resolve_model`, with train.yml's revision and
    trust_remote_code when the name is train.yml's, and the HF token of ``project``'s
    passwords.yml). Says on stderr which model it took when the user did not name it or it
    had to be resolved (downloaded, imported)."""
    from ft_data import load_tokenizer

    path = Path(name).expanduser()
    if (path.is_file() and path.suffix == ".json") or (path / "tokenizer.json").is_file():
        if origin is not None:
            click.echo(f"model: {name} ({origin})", err=True)
        return load_tokenizer(path)

    from ft_config import PASSWORDS_FILE, load_secrets
    from ft_models.resolve import resolve_model

    secrets = load_secrets(project / PASSWORDS_FILE)
    resolved = resolve_model(
        name,
        revision=model_config.revision if name == model_config.name else None,
        trust_remote_code=model_config.trust_remote_code,
        token=secrets.get("hf_token"),
    )
    why = f"{origin}; " if origin else ""
    click.echo(f"model: {name} -> {resolved.path} ({why}{resolved.reason})", err=True)
    return load_tokenizer(resolved.path)
