"""``push_to_hub``: save into a temporary folder, then one ``upload_folder`` commit."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["push_to_hub"]


def _save(obj: Any, folder: Path, options: Mapping[str, Any]) -> None:
    save = getattr(obj, "save_pretrained", None)
    if not callable(save):
        raise TypeError(f"{type(obj).__qualname__} has no save_pretrained, so it cannot be pushed to the Hub")
    params = inspect.signature(save).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    wanted = {k: options.get(k) for k in ("safe_serialization", "variant")}
    if wanted["variant"] is not None and not (takes_any or "variant" in params):
        raise TypeError(f"{type(obj).__qualname__}.save_pretrained takes no variant; push it without variant=")
    save(folder, **{k: v for k, v in wanted.items() if v is not None and (takes_any or k in params)})


def push_to_hub(obj: Any, repo_id: str, options: Mapping[str, Any]) -> Any:
    """Create ``repo_id`` when missing, save ``obj`` and upload it as one commit; returns the ``CommitInfo``."""
    from huggingface_hub import HfApi

    token = options.get("token")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=options.get("private"), exist_ok=True, token=token)
    message = options.get("commit_message") or f"Upload {type(obj).__name__}"
    with tempfile.TemporaryDirectory(prefix="difflux-push-") as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        _save(obj, folder, options)
        return api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            commit_message=message,
            token=token,
            create_pr=bool(options.get("create_pr")),
        )
