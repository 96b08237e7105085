"""passwords.yml: private by default, refused when not, encrypted on request, never printed."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import stat
import traceback
from pathlib import Path

import pytest
import yaml

from ft_config import (
    Secret,
    SecretsError,
    install_log_redaction,
    load_secrets,
    write_passwords_file,
)
from ft_config import secrets as secrets_module
from ft_config.secrets import is_encrypted, read_passwords_file

TOKEN = "hf_SeCrEtVaLuE123"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_readable_by_owner_only(tmp_path):
    path = write_passwords_file(tmp_path / "passwords.yml", {"hf_token": TOKEN})
    assert mode(path) == 0o600
    assert load_secrets(path, environ={}).get("hf_token").reveal() == TOKEN


def test_group_readable_file_is_refused_with_the_chmod_to_run(tmp_path):
    path = write_passwords_file(tmp_path / "passwords.yml", {"hf_token": TOKEN})
    path.chmod(0o640)
    with pytest.raises(SecretsError) as info:
        load_secrets(path, environ={})
    assert str(info.value) == (
        f"{path}: group can access this file (mode 0640), so ft will not read secrets from it. "
        f"Run: chmod 600 {path}"
    )
    path.chmod(0o604)
    with pytest.raises(SecretsError, match="others can access"):
        load_secrets(path, environ={})


def test_environment_variables_fill_in_what_the_file_leaves_unset(tmp_path):
    path = write_passwords_file(tmp_path / "passwords.yml", {"hf_token": TOKEN})
    env = {"HF_TOKEN": "hf_from_env", "WANDB_API_KEY": "wandb_from_env", "FT_API_KEY": "server-key"}
    found = load_secrets(path, environ=env)
    assert found.get("hf_token").reveal() == TOKEN  # the file wins
    assert found.source("hf_token") == "passwords.yml"
    assert found.get("wandb_api_key").reveal() == "wandb_from_env"
    assert found.source("wandb_api_key") == "$WANDB_API_KEY"
    assert found.get("api_key").reveal() == "server-key"
    assert load_secrets(tmp_path / "absent.yml", environ={}).get("hf_token") is None


def test_encryption_round_trip_and_wrong_passphrase(tmp_path):
    path = write_passwords_file(
        tmp_path / "passwords.yml", {"hf_token": TOKEN}, passphrase="correct horse"
    )
    assert mode(path) == 0o600
    assert is_encrypted(path)
    assert TOKEN not in path.read_text()
    assert (
        load_secrets(path, passphrase="correct horse", environ={}).get("hf_token").reveal() == TOKEN
    )
    assert (
        load_secrets(path, environ={"FT_PASSPHRASE": "correct horse"}).get("hf_token").reveal()
        == TOKEN
    )
    with pytest.raises(SecretsError, match="wrong passphrase"):
        load_secrets(path, passphrase="wrong", environ={})
    with pytest.raises(SecretsError, match="is encrypted: give the passphrase"):
        load_secrets(path, environ={})


def test_tampered_ciphertext_is_detected(tmp_path):
    path = write_passwords_file(tmp_path / "passwords.yml", {"hf_token": TOKEN}, passphrase="pw")
    text = path.read_text()
    line = next(line for line in text.splitlines() if line.startswith("ciphertext:"))
    value = line.split(": ", 1)[1]
    flipped = ("B" if value[10] == "A" else "A").join([value[:10], value[11:]])
    path.write_text(text.replace(value, flipped))
    path.chmod(0o600)
    with pytest.raises(SecretsError, match="wrong passphrase \\(or the file was altered\\)"):
        load_secrets(path, passphrase="pw", environ={})


def test_unknown_names_are_refused_without_echoing_values(tmp_path):
    path = tmp_path / "passwords.yml"
    path.write_text("hf_tokn: hf_typed_secret\n")
    path.chmod(0o600)
    with pytest.raises(SecretsError) as info:
        load_secrets(path, environ={})
    assert str(info.value).startswith(
        f"{path}:1: hf_tokn: unknown secret; did you mean 'hf_token'?"
    )
    assert "hf_typed_secret" not in str(info.value)
    path.write_text("hf_token: 12345678\n")
    with pytest.raises(SecretsError, match="expected text; put the value in quotes") as info:
        read_passwords_file(path)
    assert "12345678" not in str(info.value)


def test_secret_never_prints(tmp_path):
    secret = Secret(TOKEN)
    assert TOKEN not in repr(secret)
    assert TOKEN not in str(secret)
    assert TOKEN not in f"{secret}"
    assert TOKEN not in f"{secret!r}"
    found = load_secrets(write_passwords_file(tmp_path / "p.yml", {"hf_token": TOKEN}), environ={})
    assert TOKEN not in repr(found)
    assert secret == TOKEN and secret == Secret(TOKEN) and secret != "other"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_secret_not_in_a_traceback_with_locals():
    def use(token: Secret) -> None:
        raise RuntimeError("upload failed")

    try:
        use(Secret(TOKEN))
    except RuntimeError as exc:
        text = "".join(
            traceback.TracebackException.from_exception(exc, capture_locals=True).format()
        )
    assert "upload failed" in text and "Secret('********')" in text
    assert TOKEN not in text


def test_logs_are_redacted(tmp_path):
    found = load_secrets(write_passwords_file(tmp_path / "p.yml", {"hf_token": TOKEN}), environ={})
    stream = io.StringIO()
    logger = logging.getLogger("ft.test.redaction")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        install_log_redaction(found, logger)
        logger.info("calling the Hub with %s", TOKEN)
        logger.info("Authorization: Bearer " + TOKEN)
    finally:
        logger.removeHandler(handler)
    assert TOKEN not in stream.getvalue()
    assert stream.getvalue().count("********") == 2


def test_template_lists_every_secret_and_loads_empty(tmp_path):
    path = write_passwords_file(tmp_path / "passwords.yml")
    text = path.read_text()
    for name, env in (
        ("hf_token", "HF_TOKEN"),
        ("wandb_api_key", "WANDB_API_KEY"),
        ("api_key", "FT_API_KEY"),
        ("data_token", "FT_DATA_TOKEN"),
    ):
        assert f"\n{name}:\n" in text and f"${env}" in text
    assert read_passwords_file(path) == {
        "hf_token": None,
        "wandb_api_key": None,
        "api_key": None,
        "data_token": None,
    }


def test_values_with_yaml_characters_survive(tmp_path):
    tricky = "a: b # c 'd' \"e\""
    path = write_passwords_file(tmp_path / "p.yml", {"api_key": tricky})
    assert load_secrets(path, environ={}).get("api_key").reveal() == tricky


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_write_never_exposes_the_file(tmp_path, monkeypatch):
    # The temporary file is 0600 from its creation: check the mode the moment it is renamed.
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(mode(type(tmp_path)(src)))
        return real_replace(src, dst)

    monkeypatch.setattr("pathlib.Path.replace", lambda self, target: spy(self, target))
    write_passwords_file(tmp_path / "p.yml", {"hf_token": TOKEN})
    assert seen == [0o600]


def _hostile_encrypted(tmp_path, **changes) -> Path:
    """An encrypted passwords.yml whose header asks for `changes` (never derived: refused first)."""
    document = {
        "ft_encrypted": 1,
        "cipher": "aes-256-gcm",
        "kdf": "scrypt",
        "n": 2**17,
        "r": 8,
        "p": 1,
        "salt": "AAAAAAAAAAAAAAAAAAAAAA==",
        "nonce": "AAAAAAAAAAAAAAAA",
        "ciphertext": "AAAA",
        **changes,
    }
    path = tmp_path / "passwords.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"n": 2**40}, r"n=1099511627776, r=8, p=1 would need 1,073,741,824 MiB"),
        ({"r": 4096}, r"n=131072, r=4096, p=1 would need 65,536 MiB"),
        ({"p": 2**20}, r"p=1048576 would need 128 MiB and 1,048,576x the usual work"),
        ({"n": 1000}, r"invalid scrypt parameters n=1000, r=8, p=1"),
        ({"n": "131072"}, r"scrypt n must be a whole number, not '131072'"),
        ({"cipher": "rot13"}, r"cipher 'rot13': ft encrypts with aes-256-gcm only"),
        ({"cipher": None}, r"cipher None: ft encrypts with aes-256-gcm only"),
        ({"nonce": "AAAA"}, r"salt or nonce of the wrong length"),
    ],
)
def test_encrypted_file_header_is_checked_before_any_key_is_derived(
    tmp_path, monkeypatch, changes, reason
):
    monkeypatch.setattr(secrets_module, "_derive", lambda *a: pytest.fail("derived a key"))
    path = _hostile_encrypted(tmp_path, **changes)
    with pytest.raises(SecretsError) as info:
        load_secrets(path, passphrase="pw", environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: damaged encrypted file (")
    assert re.search(reason, message), message
    assert message.endswith("); restore it from a backup")
