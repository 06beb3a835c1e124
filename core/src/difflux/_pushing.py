"""``push_to_hub`` on pipelines, models and schedulers; the upload itself is a plugin (difflux-hub)."""

from __future__ import annotations

from typing import Any

from .errors import PluginError
from .registry import get_registry

__all__ = ["PushToHubMixin"]


class PushToHubMixin:
    """Adds ``push_to_hub``, which saves the object and uploads it through the ``difflux_push_to_hub`` hook."""

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> Any:
        """Save this object and upload it to the Hub repo ``repo_id`` (created when missing).

        Needs the ``difflux-hub`` plugin. Returns the commit information of the upload.
        """
        options = {
            "commit_message": commit_message,
            "private": private,
            "token": token,
            "create_pr": create_pr,
            "safe_serialization": safe_serialization,
            "variant": variant,
        }
        result = get_registry().hook.difflux_push_to_hub(obj=self, repo_id=repo_id, options=options)
        if result is None:
            raise PluginError(
                f"{type(self).__name__}.push_to_hub: no installed plugin uploads to the Hub; pip install difflux-hub"
            )
        return result
