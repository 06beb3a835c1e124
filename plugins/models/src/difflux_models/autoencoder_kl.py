"""``AutoencoderKL``: the KL-regularised VAE of Stable Diffusion (image <-> latent)."""

from __future__ import annotations

import dataclasses
import re

import torch
from difflux.offload import runs_forward_hooks
from difflux.outputs import BaseOutput
from torch import nn

from .vae import AutoencoderBase, CoderOptions, DecoderOutput, DiagonalGaussianDistribution, tiled_apply

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution"]


@dataclasses.dataclass
class AutoencoderKLOutput(BaseOutput):
    """The posterior over latents."""

    latent_dist: DiagonalGaussianDistribution


# Old checkpoints name the mid-block attention's layers query/key/value/proj_attn.
_LEGACY_ATTENTION = re.compile(r"^(.*mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def convert_legacy_attention_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``query``/``key``/``value``/``proj_attn`` to ``to_q``/``to_k``/``to_v``/``to_out.0``
    (1x1-conv shaped weights become linear weights)."""
    if not any(_LEGACY_ATTENTION.match(k) for k in state_dict):
        return state_dict
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        m = _LEGACY_ATTENTION.match(key)
        if m is None:
            out[key] = tensor
            continue
        if m.group(3) == "weight" and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        out[f"{m.group(1)}{_LEGACY_NAMES[m.group(2)]}.{m.group(3)}"] = tensor
    return out


class AutoencoderKL(AutoencoderBase):
    """Encode images to a diagonal Gaussian over latents; decode latents to images.

    ``scaling_factor`` (and ``shift_factor``) are read by pipelines: ``latents = (z - shift) * scale``.
    ``enable_slicing`` encodes/decodes one image at a time; ``enable_tiling`` processes
    overlapping tiles and blends their seams, for images larger than ``sample_size``.
    """

    _no_split_modules = ("ResnetBlock2D",)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        coders = CoderOptions(
            down_block_types,
            up_block_types,
            block_out_channels,
            layers_per_block,
            act_fn,
            norm_num_groups,
            mid_block_add_attention,
        )
        self.encoder = coders.encoder(in_channels, latent_channels, double_z=True)
        self.decoder = coders.decoder(latent_channels, out_channels)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (tuple, list)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    @classmethod
    def _convert_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return convert_legacy_attention_keys(state_dict)

    # -- switches ------------------------------------------------------------------------------

    def enable_slicing(self) -> None:
        """Encode and decode one batch element at a time (less memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Process images larger than ``sample_size`` as overlapping tiles blended at the seams."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- encode / decode -------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        size = self.tile_sample_min_size
        if self.use_tiling and (x.shape[-1] > size or x.shape[-2] > size):
            return tiled_apply(x, self._encode_moments, size, self.tile_latent_min_size, self.tile_overlap_factor)
        return self._encode_moments(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        size = self.tile_latent_min_size
        if self.use_tiling and (z.shape[-1] > size or z.shape[-2] > size):
            return tiled_apply(z, self._decode_latents, size, self.tile_sample_min_size, self.tile_overlap_factor)
        return self._decode_latents(z)

    @runs_forward_hooks
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images ``(batch, in_channels, H, W)`` in [-1, 1] to the latent posterior."""
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    @runs_forward_hooks
    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents ``(batch, latent_channels, h, w)`` (already unscaled) to images."""
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode; ``sample_posterior`` draws from the posterior instead of its mode."""
        out = self.encode(sample)
        if not isinstance(out, AutoencoderKLOutput):
            raise RuntimeError("AutoencoderKL.forward: internal check failed: isinstance(out, AutoencoderKLOutput)")
        posterior = out.latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
