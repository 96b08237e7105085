"""Publishing an export to the Hugging Face Hub (or any server `HF_ENDPOINT` points at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ft_export.types import ExportError


def push_to_hub(
    folder: Path, repo_id: str, token: Any, *, private: bool = False, message: str | None = None
) -> str:
    """Upload every file of the export `folder` to the model repo `repo_id` (created when
    missing) in one commit; returns the commit's URL. `token` is a str or an
    `ft_config.Secret`; raises `ExportError` without one or when the Hub refuses."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if token is None:
        raise ExportError(
            "--push-to-hub needs a Hugging Face token: `ft secrets set hf_token` "
            "(stored in passwords.yml) or the HF_TOKEN environment variable"
        )
    value = token.reveal() if hasattr(token, "reveal") else str(token)
    api = HfApi(token=value)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=message or f"Upload {folder.name} exported by ft",
        )
    except HfHubHTTPError as error:
        raise ExportError(f"the Hub refused the upload to {repo_id}: {error}") from None
    return str(info.commit_url)
