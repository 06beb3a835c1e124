"""Paint by Example's exemplar encoder: CLIP's vision tower, a small transformer mapper, a projection.

Yang et al., *Paint by Example: Exemplar-based Image Editing with Diffusion Models* (CVPR 2023,
arXiv:2211.13227), sec. 3.2: the exemplar's pooled CLIP image embedding (one token) goes through
``(num_hidden_layers + 1) // 5`` transformer blocks, a layer norm and a linear projection to the
UNet's cross-attention width; a learned ``uncond_vector`` is the unconditional embedding of
classifier-free guidance. Built on ``transformers``' ``CLIPVisionModel`` and difflux-models'
``BasicTransformerBlock``; state-dict keys are Diffusers'.
"""

from __future__ import annotations

import torch
from difflux_models.layers.attention import BasicTransformerBlock
from transformers import CLIPPreTrainedModel, CLIPVisionConfig, CLIPVisionModel

__all__ = ["PaintByExampleImageEncoder", "PaintByExampleMapper"]


class PaintByExampleMapper(torch.nn.Module):
    """``(num_hidden_layers + 1) // 5`` single-head self-attention transformer blocks over the exemplar token."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.blocks = torch.nn.ModuleList(
            BasicTransformerBlock(width, 1, width, activation_fn="gelu", attention_bias=True)
            for _ in range((config.num_hidden_layers + 1) // 5)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states


class PaintByExampleImageEncoder(CLIPPreTrainedModel):
    """Exemplar images ``(batch, 3, size, size)`` (CLIP-normalised) to ``(batch, 1, proj_size)`` embeddings."""

    config_class = CLIPVisionConfig

    def __init__(self, config: CLIPVisionConfig, proj_size: int | None = None) -> None:
        super().__init__(config)
        self.proj_size: int = int(proj_size or getattr(config, "projection_dim", None) or 768)
        self.model = CLIPVisionModel(config)
        self.mapper = PaintByExampleMapper(config)
        self.final_layer_norm = torch.nn.LayerNorm(config.hidden_size)
        self.proj_out = torch.nn.Linear(config.hidden_size, self.proj_size)
        self.uncond_vector = torch.nn.Parameter(torch.randn((1, 1, self.proj_size)))
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, return_uncond_vector: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The exemplar embeddings (and the ``(1, 1, proj_size)`` unconditional vector when asked)."""
        pooled = self.model(pixel_values=pixel_values).pooler_output
        states = self.proj_out(self.final_layer_norm(self.mapper(pooled[:, None])))
        return (states, self.uncond_vector) if return_uncond_vector else states
