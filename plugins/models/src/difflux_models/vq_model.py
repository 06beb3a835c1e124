"""``VQModel``: the vector-quantised autoencoder of latent diffusion (LDM) and VQ-diffusion."""

from __future__ import annotations

import dataclasses

import torch
from difflux.offload import runs_forward_hooks
from difflux.outputs import BaseOutput
from torch import nn

from .vae import AutoencoderBase, CoderOptions, DecoderOutput

__all__ = ["VQEncoderOutput", "VQModel", "VectorQuantizer"]


@dataclasses.dataclass
class VQEncoderOutput(BaseOutput):
    """Encoded (not yet quantised) latents."""

    latents: torch.Tensor


class VectorQuantizer(nn.Module):
    """Snap each latent vector to its nearest codebook entry (key ``embedding.weight``)."""

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float = 0.25, legacy: bool = True) -> None:
        super().__init__()
        self.n_e = n_e
        self.vq_embed_dim = vq_embed_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(quantised z, commitment loss, codebook indices)``; gradients pass straight through."""
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        indices = torch.argmin(torch.cdist(flat, self.embedding.weight), dim=1)
        z_q = self.embedding(indices).view(z.shape)
        near, far = (1.0, self.beta) if self.legacy else (self.beta, 1.0)
        loss = near * torch.mean((z_q.detach() - z) ** 2) + far * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, indices.reshape(-1, 1)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        """Codebook vectors for ``indices``; with ``shape`` ``(batch, h, w, dim)`` laid out as an image."""
        z_q: torch.Tensor = self.embedding(indices.reshape(-1) if shape is not None else indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(AutoencoderBase):
    """Encoder, vector quantiser, decoder. ``decode`` quantises unless ``force_not_quantize``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
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
        embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        self.encoder = coders.encoder(in_channels, latent_channels, double_z=False)
        self.quant_conv = nn.Conv2d(latent_channels, embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(embed_dim, latent_channels, 1)
        self.decoder = coders.decoder(latent_channels, out_channels, norm_type=norm_type)

    @runs_forward_hooks
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple[torch.Tensor]:
        """Images to (unquantised) latents."""
        h = self._encode_moments(x)
        if not return_dict:
            return (h,)
        return VQEncoderOutput(latents=h)

    @runs_forward_hooks
    def decode(
        self,
        h: torch.Tensor,
        force_not_quantize: bool = False,
        return_dict: bool = True,
        shape: tuple[int, ...] | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor, torch.Tensor]:
        """Latents to images. ``force_not_quantize`` skips quantisation; with ``lookup_from_codebook``
        in the config, ``h`` is then codebook indices laid out by ``shape``."""
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            quant = self.quantize.get_codebook_entry(h, shape) if self.config.lookup_from_codebook else h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=quant.dtype)
        dec = self._decode_latents(quant)
        if not return_dict:
            return dec, commit_loss
        return DecoderOutput(sample=dec, commit_loss=commit_loss)

    def forward(
        self, sample: torch.Tensor, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor, torch.Tensor]:
        out = self.encode(sample)
        if not isinstance(out, VQEncoderOutput):
            raise RuntimeError("VQModel.forward: internal check failed: isinstance(out, VQEncoderOutput)")
        dec = self.decode(out.latents)
        if not isinstance(dec, DecoderOutput):
            raise RuntimeError("VQModel.forward: internal check failed: isinstance(dec, DecoderOutput)")
        if not return_dict:
            if dec.commit_loss is None:
                raise RuntimeError("VQModel.forward: internal check failed: dec.commit_loss is not None")
            return dec.sample, dec.commit_loss
        return dec
