"""difflux plugin attention-sdpa: ``torch.nn.functional.scaled_dot_product_attention`` as the default backend."""

from __future__ import annotations

__all__ = ["BACKEND_NAME", "PRIORITY"]

#: The name users select the backend by (``difflux.attention_backend("sdpa")``).
BACKEND_NAME = "sdpa"
#: Automatic-selection priority: above core's ``reference`` (-100). A backend that wants to
#: replace SDPA as the default registers above this.
PRIORITY = 100
