"""``MultiControlNetModel``: several ControlNets whose residuals add up (Diffusers' Multi-ControlNet format).

Saved as one folder per net: ``<dir>``, ``<dir>_1``, ``<dir>_2`` ... (in a pipeline: ``controlnet``,
``controlnet_1`` ...), and loaded back from the same layout, as Diffusers does.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from difflux.modeling import ModelMixin
from difflux.options import LoadOptions
from torch import nn

from .controlnet import ControlNetModel, ControlNetOutput

__all__ = ["MultiControlNetModel"]


class MultiControlNetModel(ModelMixin):
    """Run each ControlNet of ``controlnets`` on its own condition image and sum the residuals.

    :raises ValueError: when ``controlnets`` is empty or holds something other than a ControlNetModel.
    """

    ignore_for_config = frozenset({"controlnets"})
    #: the class of the nets it holds (and loads); a subclass of it is refused (Union nets take other inputs)
    net_class: ClassVar[type[ControlNetModel]] = ControlNetModel

    def __init__(self, controlnets: Sequence[ControlNetModel]) -> None:
        super().__init__()
        nets = list(controlnets)
        want, me = self.net_class.__name__, type(self).__name__
        if not nets:
            raise ValueError(f"{me} needs at least one {want}")
        bad = [type(n).__name__ for n in nets if type(n) is not self.net_class]
        if bad:
            raise ValueError(f"{me} takes {want} instances only, got {', '.join(bad)}")
        self.nets = nn.ModuleList(nets)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        conditioning_scale: Sequence[float],
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The summed residuals ``(down_block_res_samples, mid_block_res_sample)``.

        ``controlnet_cond`` and ``conditioning_scale`` hold one entry per net (shapes as in
        :meth:`ControlNetModel.forward`). Always returns the tuple (Diffusers does too).

        :raises ValueError: when the lists' lengths differ from the number of nets.
        """
        n = len(self.nets)
        if len(controlnet_cond) != n or len(conditioning_scale) != n:
            raise ValueError(
                f"MultiControlNetModel has {n} nets but got {len(controlnet_cond)} condition images and "
                f"{len(conditioning_scale)} scales; pass one of each per net"
            )
        down: list[torch.Tensor] = []
        mid: torch.Tensor | None = None
        runs = list(zip(controlnet_cond, conditioning_scale, self.nets, strict=True))
        active = [r for r in runs if r[1] != 0] or runs[:1]  # a net at scale 0 adds exact zeros: skip it
        for image, scale, net in active:
            out = net(
                sample,
                timestep,
                encoder_hidden_states,
                image,
                conditioning_scale=scale,
                class_labels=class_labels,
                timestep_cond=timestep_cond,
                attention_mask=attention_mask,
                added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs,
                guess_mode=guess_mode,
                return_dict=True,
            )
            if not isinstance(out, ControlNetOutput):
                raise RuntimeError("MultiControlNetModel.forward: internal check failed: ControlNetOutput")
            if mid is None:
                down, mid = list(out.down_block_res_samples), out.mid_block_res_sample
            else:
                down = [a + b for a, b in zip(down, out.down_block_res_samples, strict=True)]
                mid = mid + out.mid_block_res_sample
        if mid is None:
            raise RuntimeError("MultiControlNetModel.forward: internal check failed: at least one net")
        return down, mid

    @staticmethod
    def folders(save_directory: str | os.PathLike[str], count: int) -> list[Path]:
        """The folders ``count`` nets save to: ``<dir>``, ``<dir>_1``, ``<dir>_2`` ..."""
        base = os.fspath(save_directory)
        return [Path(base if i == 0 else f"{base}_{i}") for i in range(count)]

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | os.PathLike[str], **kwargs: Any
    ) -> Path:
        """Save net ``i`` into ``<save_directory>_i`` (the first into ``save_directory``); ``kwargs``
        go to each :meth:`ControlNetModel.save_pretrained`. Returns ``save_directory``."""
        for net, folder in zip(self.nets, self.folders(save_directory, len(self.nets)), strict=True):
            typing.cast(ControlNetModel, net).save_pretrained(folder, **kwargs)
        return Path(save_directory)

    @classmethod
    def _from_folder(  # type: ignore[override]
        cls,
        folder: str | os.PathLike[str],
        options: LoadOptions,
        *,
        component: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> MultiControlNetModel:
        """Load ``folder``, ``folder_1``, ``folder_2`` ... while they exist.

        :raises FileNotFoundError: when ``folder`` is not a directory.
        """
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{cls.__name__}: no ControlNet folder at {os.fspath(folder)}")
        if options.output_loading_info:
            options = options.replace(output_loading_info=False)
        nets: list[ControlNetModel] = []
        i = 0
        while (path := cls.folders(folder, i + 1)[i]).is_dir():
            loaded = cls.net_class._from_folder(path, options, component=component, overrides=overrides)
            nets.append(loaded if isinstance(loaded, ControlNetModel) else loaded[0])
            i += 1
        return cls(nets)
