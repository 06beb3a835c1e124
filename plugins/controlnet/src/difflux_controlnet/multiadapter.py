"""``MultiAdapter``: several T2I-Adapters whose weighted features add up (Diffusers' ``MultiAdapter`` format).

Saved as one folder per adapter: ``<dir>``, ``<dir>_1``, ``<dir>_2`` ... (in a pipeline: ``adapter``,
``adapter_1`` ...), and loaded back from the same layout, as Diffusers does.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from difflux.modeling import ModelMixin
from difflux.options import LoadOptions
from torch import nn

from .multicontrolnet import MultiControlNetModel
from .t2i_adapter import T2IAdapter

__all__ = ["MultiAdapter"]


class MultiAdapter(ModelMixin):
    """Run each :class:`T2IAdapter` of ``adapters`` on its own condition image and sum the weighted features.

    All adapters must downscale alike (same ``downscale_factor`` and ``total_downscale_factor``),
    so their features line up.

    :raises ValueError: for fewer than two adapters (use the :class:`T2IAdapter` itself for one),
        something other than a ``T2IAdapter``, or adapters that downscale differently.
    """

    ignore_for_config = frozenset({"adapters"})

    def __init__(self, adapters: Sequence[T2IAdapter]) -> None:
        super().__init__()
        items = list(adapters)
        bad = [type(a).__name__ for a in items if not isinstance(a, T2IAdapter)]
        if bad:
            raise ValueError(f"MultiAdapter takes T2IAdapter instances only, got {', '.join(bad)}")
        if len(items) < 2:
            raise ValueError(
                f"MultiAdapter needs at least two T2IAdapters, got {len(items)}; pass a single T2IAdapter as it is"
            )
        first = items[0]
        for i, other in enumerate(items[1:], start=1):
            if (other.downscale_factor, other.total_downscale_factor) != (
                first.downscale_factor,
                first.total_downscale_factor,
            ):
                raise ValueError(
                    f"MultiAdapter: adapter {i} downscales by {other.downscale_factor} (total "
                    f"{other.total_downscale_factor}) but adapter 0 by {first.downscale_factor} (total "
                    f"{first.total_downscale_factor}); their features must line up"
                )
        self.num_adapter = len(items)
        self.adapters = nn.ModuleList(items)
        self.downscale_factor = first.downscale_factor
        self.total_downscale_factor = first.total_downscale_factor

    def forward(
        self, xs: Sequence[torch.Tensor], adapter_weights: Sequence[float] | float | None = None
    ) -> list[torch.Tensor]:
        """``sum_k w_k * adapter_k(xs[k])``, feature by feature.

        :param xs: one condition image batch per adapter (shapes as in :meth:`T2IAdapter.forward`).
        :param adapter_weights: one weight per adapter, or one for all (default: ``1 / n`` each).
        :raises ValueError: when the counts differ from the number of adapters.
        """
        n = self.num_adapter
        if adapter_weights is None:
            weights = [1.0 / n] * n
        elif isinstance(adapter_weights, (int, float)):
            weights = [float(adapter_weights)] * n
        else:
            weights = [float(w) for w in adapter_weights]
        if len(xs) != n or len(weights) != n:
            raise ValueError(
                f"MultiAdapter has {n} adapters but got {len(xs)} condition images and {len(weights)} weights; "
                "pass one of each per adapter"
            )
        total: list[torch.Tensor] = []
        for x, w, adapter in zip(xs, weights, self.adapters, strict=True):
            features = adapter(x)
            total = (
                [w * f for f in features] if not total else [a + w * f for a, f in zip(total, features, strict=True)]
            )
        return total

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | os.PathLike[str], **kwargs: Any
    ) -> Path:
        """Save adapter ``i`` into ``<save_directory>_i`` (the first into ``save_directory``); ``kwargs``
        go to each :meth:`T2IAdapter.save_pretrained`. Returns ``save_directory``."""
        folders = MultiControlNetModel.folders(save_directory, self.num_adapter)
        for adapter, folder in zip(self.adapters, folders, strict=True):
            typing.cast(T2IAdapter, adapter).save_pretrained(folder, **kwargs)
        return Path(save_directory)

    @classmethod
    def _from_folder(  # type: ignore[override]
        cls,
        folder: str | os.PathLike[str],
        options: LoadOptions,
        *,
        component: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> MultiAdapter:
        """Load ``folder``, ``folder_1``, ``folder_2`` ... while they exist.

        :raises FileNotFoundError: when ``folder`` is not a directory.
        """
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"MultiAdapter: no T2IAdapter folder at {os.fspath(folder)}")
        if options.output_loading_info:
            options = options.replace(output_loading_info=False)
        adapters: list[T2IAdapter] = []
        while (path := MultiControlNetModel.folders(folder, len(adapters) + 1)[-1]).is_dir():
            loaded = T2IAdapter._from_folder(path, options, component=component, overrides=overrides)
            adapters.append(loaded if isinstance(loaded, T2IAdapter) else loaded[0])
        return cls(adapters)
