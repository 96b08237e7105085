"""ft-config: the train.yml schema, profiles, secrets (passwords.yml) and app paths.

    >>> from ft_config import load_config
    >>> config = load_config("train.yml", overrides=["training.learning_rate=1e-4"])
    >>> config.training.learning_rate
    0.0001

Errors name the file, the line and the key: `train.yml:14: training.learning_rate: expected a
number, got 'fast'`.

Plugins of every entry point group (formats, templates, exporters, trainers, commands) are found
through `ft_config.plugins` (`plugins.discover(group)`, `plugins.load(group, name)`);
`FT_NO_PLUGINS=1` keeps to ft's own.
"""

from ft_config import plugins
from ft_config.files import atomic_write_bytes, atomic_write_text
from ft_config.loader import (
    ConfigError,
    ConfigProblem,
    Override,
    load_config,
    parse_override,
    resolve_path,
)
from ft_config.paths import AppPaths, app_paths
from ft_config.plugins import PluginError, PluginWarning
from ft_config.reference import json_schema, markdown_reference, render_train_yml
from ft_config.schema import (
    DataConfig,
    DataSource,
    LoggingConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    ResourcesConfig,
    TrainConfig,
    TrainingConfig,
    TuneConfig,
)
from ft_config.secrets import (
    PASSWORDS_FILE,
    Secret,
    Secrets,
    SecretsError,
    install_log_redaction,
    load_secrets,
    redact_url,
    redact_urls_in,
    write_passwords_file,
)
from ft_config.structure import unstructure_config, valid_config_line
from ft_config.yamlfile import dump_yaml

__version__ = "0.1.0"


def dump_config(config: TrainConfig) -> str:
    """The config as YAML text, every setting in schema order (for snapshots and `ft config show`)."""
    return dump_yaml(unstructure_config(config))


__all__ = [
    "PASSWORDS_FILE",
    "AppPaths",
    "ConfigError",
    "ConfigProblem",
    "DataConfig",
    "DataSource",
    "LoggingConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "Override",
    "PluginError",
    "PluginWarning",
    "ResourcesConfig",
    "Secret",
    "Secrets",
    "SecretsError",
    "TrainConfig",
    "TrainingConfig",
    "TuneConfig",
    "app_paths",
    "atomic_write_bytes",
    "atomic_write_text",
    "dump_config",
    "install_log_redaction",
    "json_schema",
    "load_config",
    "load_secrets",
    "markdown_reference",
    "parse_override",
    "plugins",
    "redact_url",
    "redact_urls_in",
    "render_train_yml",
    "resolve_path",
    "unstructure_config",
    "valid_config_line",
    "write_passwords_file",
]
