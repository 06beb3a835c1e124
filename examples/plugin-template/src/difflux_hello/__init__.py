"""difflux-hello: a template difflux plugin (a pipeline, a model, a scheduler, an attention backend)."""

from __future__ import annotations

__all__ = ["ATTENTION_BACKEND"]

#: The name users select the attention backend by (``difflux.attention.attention_backend("hello-chunked")``).
ATTENTION_BACKEND = "hello-chunked"
