"""passwords.yml: the secrets of a project (Hub token, W&B key, server API key).

Rules: the file is created readable by its owner only (0600) and refused when group or others
can read it; it can be encrypted with a passphrase; each secret falls back to an environment
variable; and a secret's value never shows in a repr, a log line or a traceback: it lives in a
`Secret`, which prints as `********` until `reveal()` is called where the value is used.

Encryption uses the `cryptography` package (scrypt to derive a key from the passphrase,
AES-256-GCM to encrypt and authenticate): it is the most widely deployed, audited Python crypto
library, with wheels for every platform ft runs on, and needs no extra tool to be installed.
"""

from __future__ import annotations

import base64
import difflib
import hmac
import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ft_config.files import atomic_write_text
from ft_config.yamlfile import YamlError, dump_yaml, read_yaml, read_yaml_file

PASSWORDS_FILE = "passwords.yml"
PASSPHRASE_ENV = "FT_PASSPHRASE"
MASK = "********"


@attrs.frozen
class SecretSpec:
    name: str
    env: str
    help: str


SECRET_SPECS: tuple[SecretSpec, ...] = (
    SecretSpec(
        "hf_token", "HF_TOKEN", "Hugging Face access token: gated or private models, --push-to-hub"
    ),
    SecretSpec(
        "wandb_api_key", "WANDB_API_KEY", "Weights & Biases API key, for `logging.wandb: true`"
    ),
    SecretSpec(
        "api_key",
        "FT_API_KEY",
        "the key clients send to ft-server; without one it binds only 127.0.0.1",
    ),
    SecretSpec(
        "data_token",
        "FT_DATA_TOKEN",
        "token for http(s) data URLs: sent as `Authorization: Bearer`, or where the URL "
        "writes {data_token}",
    ),
)
SECRET_NAMES = tuple(spec.name for spec in SECRET_SPECS)


class SecretsError(Exception):
    """passwords.yml cannot be used; the message says why and what to do."""


class Secret:
    """A secret value that does not print itself. Call `reveal()` where the value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        return isinstance(other, str) and hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled or copied out of the process")


@attrs.frozen
class Secrets:
    """The secrets in force: from passwords.yml first, then environment variables."""

    _values: Mapping[str, Secret] = attrs.field(repr=False, alias="values")
    _sources: Mapping[str, str] = attrs.field(alias="sources")

    def get(self, name: str) -> Secret | None:
        """The secret `name` (`hf_token`, `wandb_api_key`, `api_key`), or None if unset."""
        if name not in SECRET_NAMES:
            raise KeyError(f"no secret {name!r}; secrets are {', '.join(SECRET_NAMES)}")
        return self._values.get(name)

    def source(self, name: str) -> str | None:
        """Where a secret came from: `passwords.yml` or `$HF_TOKEN`; None if unset."""
        return self._sources.get(name)

    def redact(self, text: str) -> str:
        """`text` with every secret value replaced by `********`."""
        for secret in self._values.values():
            value = secret.reveal()
            if len(value) >= 4:  # masking one-letter "secrets" would garble ordinary text
                text = text.replace(value, MASK)
        return text

    def __repr__(self) -> str:
        return f"Secrets({', '.join(f'{k}={MASK} from {v}' for k, v in self._sources.items())})"


class RedactingFilter(logging.Filter):
    """A logging filter that masks secret values in every record it passes."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.secrets.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction(
    secrets: Secrets, logger: logging.Logger | None = None
) -> RedactingFilter:
    """Mask `secrets` in everything logged through `logger`'s handlers (default: the root's)."""
    target = logger or logging.getLogger()
    log_filter = RedactingFilter(secrets)
    for handler in target.handlers:
        handler.addFilter(log_filter)
    target.addFilter(log_filter)
    return log_filter


# -- credentials in URLs ----------------------------------------------------------------------
URL_TOKEN_PLACEHOLDER = "{data_token}"
"""Written in a data URL where a service wants its token (`?token={data_token}`,
`https://user:{data_token}@host/...`): replaced by passwords.yml's `data_token` only when the
file is downloaded, so train.yml, run records and errors never hold the token itself."""
# Query (or fragment) parameters whose value is a credential: tokens, keys, passwords,
# signatures of pre-signed links (S3 X-Amz-*, Google X-Goog-*, Azure `sig`).
_CREDENTIAL_PARAM = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|credential|session|^x-amz-|^x-goog-|^code$", re.I
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)]")


def redact_url(url: str) -> str:
    """`url` with its credentials masked: the `user:password@` part, and the values of query
    and fragment parameters named like a token, key, password or signature. Anything that is
    not a URL comes back unchanged. What ft records and prints of a data URL goes through here."""
    text = str(url)
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # not parseable: show only the scheme
        return text.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            _redact_params(parts.query),
            _redact_params(parts.fragment),
        )
    )


def redact_urls_in(text: str) -> str:
    """`text` (an error message, a log line) with every URL in it passed through redact_url."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact_params(query: str) -> str:
    pieces = []
    for piece in query.split("&") if query else []:
        name, eq, value = piece.partition("=")
        if (
            eq
            and value
            and value != URL_TOKEN_PLACEHOLDER
            and _CREDENTIAL_PARAM.search(urllib.parse.unquote_plus(name))
        ):
            value = MASK
        pieces.append(name + eq + value)
    return "&".join(pieces)


def check_permissions(path: Path) -> None:
    """Refuse a secrets file that group or others can read or write."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
        raise SecretsError(
            f"{path}: {who} can access this file (mode {mode:04o}), so ft will not read secrets "
            f"from it. Run: chmod 600 {path}"
        )


def load_secrets(
    path: str | os.PathLike[str] | None = None,
    *,
    passphrase: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Secrets:
    """Read the secrets from `path` (a passwords.yml; may be absent) and the environment.

    An encrypted file needs `passphrase` or `$FT_PASSPHRASE`. Values in the file win over the
    environment variables, which fill in what the file leaves unset.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Secret] = {}
    sources: dict[str, str] = {}
    if path is not None and Path(path).exists():
        file = Path(path)
        check_permissions(file)
        for name, value in read_passwords_file(file, passphrase=passphrase, environ=env).items():
            if value:
                values[name], sources[name] = Secret(value), file.name
    for spec in SECRET_SPECS:
        if spec.name not in values and env.get(spec.env):
            values[spec.name], sources[spec.name] = Secret(env[spec.env]), f"${spec.env}"
    return Secrets(values=values, sources=sources)


def read_passwords_file(
    path: Path, *, passphrase: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """The plain values of a passwords.yml (decrypting it if needed). Checks names and types."""
    try:
        data, lines = read_yaml_file(path)
    except YamlError as exc:
        raise SecretsError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretsError(f"{path}:1: expected `name: value` lines ({', '.join(SECRET_NAMES)})")
    if data.get("ft_encrypted"):
        env = os.environ if environ is None else environ
        passphrase = passphrase if passphrase is not None else env.get(PASSPHRASE_ENV)
        if not passphrase:
            raise SecretsError(
                f"{path} is encrypted: give the passphrase (set {PASSPHRASE_ENV}, or run the "
                "command in a terminal to be asked for it)"
            )
        plain = _decrypt(data, passphrase, path)
        try:
            data, lines = read_yaml(plain, f"{path} (decrypted)")
        except YamlError as exc:
            raise SecretsError(str(exc)) from None
        data = data or {}
    values: dict[str, str | None] = {}
    for key, value in data.items():
        line = lines.get((key,), 1)
        if key not in SECRET_NAMES:
            close = difflib.get_close_matches(str(key), SECRET_NAMES, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SecretsError(
                f"{path}:{line}: {key}: unknown secret; {hint}passwords.yml holds "
                f"{', '.join(SECRET_NAMES)} (settings go in train.yml)"
            )
        if value is not None and not isinstance(value, str):
            # Never echo the value: it may be a real secret typed without quotes.
            raise SecretsError(f"{path}:{line}: {key}: expected text; put the value in quotes")
        values[key] = value
    return values


def render_passwords_template(values: Mapping[str, str | None] | None = None) -> str:
    """A commented passwords.yml; `values` fills in secrets (unset ones stay empty)."""
    values = values or {}
    lines = [
        "# ft secrets. Created readable by you only (chmod 600); ft refuses to read it if group or",
        "# others can. It is listed in .gitignore: never commit it. Encrypt it with",
        "# `ft secrets encrypt`. Each value can come from an environment variable instead.",
    ]
    for spec in SECRET_SPECS:
        lines.append(f"# {spec.help} (or ${spec.env})")
        value = values.get(spec.name)
        lines.append(f"{spec.name}: {_quote(value)}" if value else f"{spec.name}:")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return dump_yaml(value).removesuffix("\n...\n").strip()


def write_passwords_file(
    path: str | os.PathLike[str],
    values: Mapping[str, str | None] | None = None,
    *,
    passphrase: str | None = None,
) -> Path:
    """Write passwords.yml atomically with mode 0600, encrypted when `passphrase` is given."""
    for name in values or {}:
        if name not in SECRET_NAMES:
            raise SecretsError(f"no secret {name!r}; secrets are {', '.join(SECRET_NAMES)}")
    text = render_passwords_template(values)
    if passphrase:
        text = _encrypt(text, passphrase)
    return atomic_write_text(path, text, mode=0o600)


# --- encryption ---------------------------------------------------------------------------
_AAD = b"ft passwords.yml v1"
# scrypt at N=2^17, r=8: about 128 MiB and a fraction of a second, the cost OWASP recommends.
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
_CIPHER = "aes-256-gcm"
# What an encrypted file may ask of scrypt. The parameters come from the file, so a hostile file
# could otherwise ask for terabytes (memory is 128 * n * r bytes) or hours (work grows with
# n * r * p). These bounds allow 8x today's cost in memory and 8x in time.
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAX_MEMORY = 1 << 30  # bytes: 128 * n * r
_SCRYPT_MAX_WORK = 2**20 * 8 * 8  # n * r * p


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _encrypt(plain: str, passphrase: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    key = _derive(passphrase, salt, **_SCRYPT)
    sealed = AESGCM(key).encrypt(nonce, plain.encode("utf-8"), _AAD)
    document = {
        "ft_encrypted": 1,
        "cipher": _CIPHER,
        "kdf": "scrypt",
        **_SCRYPT,
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    header = (
        "# ft secrets, encrypted with a passphrase. `ft secrets decrypt` turns it back into text.\n"
    )
    return header + dump_yaml(document)


def _decrypt(document: Mapping[str, Any], passphrase: str, path: Path) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        if document.get("ft_encrypted") != 1 or document.get("kdf") != "scrypt":
            raise ValueError("unknown encryption format")
        if document.get("cipher") != _CIPHER:
            raise ValueError(f"cipher {document.get('cipher')!r}: ft encrypts with {_CIPHER} only")
        n, r, p = (_whole_number(document, name) for name in ("n", "r", "p"))
        _check_scrypt(n, r, p)
        salt = base64.b64decode(document["salt"], validate=True)
        nonce = base64.b64decode(document["nonce"], validate=True)
        sealed = base64.b64decode(document["ciphertext"], validate=True)
        if len(salt) < 16 or len(nonce) != 12:
            raise ValueError("salt or nonce of the wrong length")
    except (KeyError, ValueError, TypeError) as exc:
        raise SecretsError(
            f"{path}: damaged encrypted file ({exc}); restore it from a backup"
        ) from None
    key = _derive(passphrase, salt, n, r, p)
    try:
        return AESGCM(key).decrypt(nonce, sealed, _AAD).decode("utf-8")
    except InvalidTag:
        raise SecretsError(f"{path}: wrong passphrase (or the file was altered)") from None


def _whole_number(document: Mapping[str, Any], name: str) -> int:
    value = document[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"scrypt {name} must be a whole number, not {value!r}")
    return value


def _check_scrypt(n: int, r: int, p: int) -> None:
    """Refuse scrypt parameters that are invalid or would cost more than ft ever asks for."""
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError(f"invalid scrypt parameters n={n}, r={r}, p={p}")
    if n > _SCRYPT_MAX_N or 128 * n * r > _SCRYPT_MAX_MEMORY or n * r * p > _SCRYPT_MAX_WORK:
        raise ValueError(
            f"scrypt parameters n={n}, r={r}, p={p} would need "
            f"{128 * n * r / 2**20:,.0f} MiB and {n * r * p / (2**17 * 8):,.0f}x the usual work; "
            f"ft allows n up to 2^20, {_SCRYPT_MAX_MEMORY >> 20} MiB and 8x"
        )


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether a passwords.yml is encrypted (without needing the passphrase)."""
    try:
        data, _ = read_yaml_file(Path(path))
    except YamlError:
        return False
    return isinstance(data, dict) and bool(data.get("ft_encrypted"))
