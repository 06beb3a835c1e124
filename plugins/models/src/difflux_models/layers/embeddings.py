"""Timestep, class, patch and size embeddings (Diffusers' key names)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import get_activation

__all__ = [
    "CombinedTimestepLabelEmbeddings",
    "GLIGENTextBoundingboxProjection",
    "GaussianFourierProjection",
    "LabelEmbedding",
    "PatchEmbed",
    "PixArtAlphaCombinedTimestepSizeEmbeddings",
    "PixArtAlphaTextProjection",
    "TimestepEmbedding",
    "Timesteps",
    "class_embedding",
    "fourier_box_embedding",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "get_timestep_embedding",
]


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal embedding of 1-d ``timesteps``: ``(N, embedding_dim)``, ``[sin, cos]`` (or ``[cos, sin]``).

    Frequencies are ``max_period ** (-i / (half - downscale_freq_shift))`` for ``i < half``.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-d, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * -math.log(max_period)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps[:, None].float() * freqs[None, :] * scale
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps (see :func:`get_timestep_embedding`)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
            scale=self.scale,
        )


class TimestepEmbedding(nn.Module):
    """Two-layer MLP over a projected timestep (``linear_1``, ``linear_2``, optional ``cond_proj``)."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
        sample_proj_bias: bool = True,
    ) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise RuntimeError("a condition was given but this embedding has no cond_proj")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


def class_embedding(
    class_embed_type: str | None,
    *,
    num_class_embeds: int | None,
    timestep_input_dim: int,
    time_embed_dim: int,
    act_fn: str = "silu",
    projection_input_dim: int | None = None,
    allow_projection: bool = False,
) -> nn.Module | None:
    """The UNets' class-label embedding (key ``class_embedding``), by Diffusers' ``class_embed_type``.

    ``None`` with ``num_class_embeds``: a lookup table; ``"timestep"``: labels embedded like
    timesteps; ``"identity"``: the labels are embeddings already; with ``allow_projection``,
    ``"projection"`` (an MLP) and ``"simple_projection"`` (one linear layer) of
    ``projection_input_dim`` features. ``None`` when the UNet has no class embedding.
    """
    if class_embed_type is None:
        return nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
    if class_embed_type == "timestep":
        return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
    if class_embed_type == "identity":
        return nn.Identity()
    if allow_projection and class_embed_type in ("projection", "simple_projection"):
        if projection_input_dim is None:
            raise ValueError(f"class_embed_type={class_embed_type!r} needs projection_class_embeddings_input_dim")
        if class_embed_type == "projection":
            return TimestepEmbedding(projection_input_dim, time_embed_dim)
        return nn.Linear(projection_input_dim, time_embed_dim)
    raise ValueError(f"unknown class_embed_type {class_embed_type!r}")


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of (log) noise levels, for score-SDE models (key ``weight``)."""

    def __init__(
        self,
        embedding_size: int = 256,
        scale: float = 1.0,
        set_W_to_weight: bool = True,
        log: bool = True,
        flip_sin_to_cos: bool = False,
    ) -> None:
        super().__init__()
        weight = torch.randn(embedding_size) * scale
        if set_W_to_weight:  # Diffusers draws the weights twice and keeps the second draw
            weight = torch.randn(embedding_size) * scale
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            x = torch.log(x)
        proj = x[:, None] * self.weight[None, :] * (2 * math.pi)
        if self.flip_sin_to_cos:
            return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class LabelEmbedding(nn.Module):
    """Class-label table with one extra "dropped" row when ``dropout_prob > 0`` (classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            labels = torch.where(torch.as_tensor(force_drop_ids == 1, device=labels.device), self.num_classes, labels)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)  # type: ignore[no-any-return]


class CombinedTimestepLabelEmbeddings(nn.Module):
    """Timestep embedding plus class-label embedding (DiT's conditioning)."""

    def __init__(self, num_classes: int, embedding_dim: int, class_dropout_prob: float = 0.1) -> None:
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.class_embedder = LabelEmbedding(num_classes, embedding_dim, class_dropout_prob)

    def forward(
        self, timestep: torch.Tensor, class_labels: torch.Tensor, hidden_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        t = self.timestep_embedder(self.time_proj(timestep).to(dtype=hidden_dtype))
        return t + self.class_embedder(class_labels)  # type: ignore[no-any-return]


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """Timestep embedding plus, optionally, resolution and aspect-ratio embeddings (PixArt-alpha)."""

    def __init__(self, embedding_dim: int, size_emb_dim: int, use_additional_conditions: bool = False) -> None:
        super().__init__()
        self.outdim = size_emb_dim
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.use_additional_conditions = use_additional_conditions
        if use_additional_conditions:
            self.additional_condition_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.resolution_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=size_emb_dim)
            self.aspect_ratio_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=size_emb_dim)

    def forward(
        self,
        timestep: torch.Tensor,
        resolution: torch.Tensor | None,
        aspect_ratio: torch.Tensor | None,
        batch_size: int | None,
        hidden_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        emb = self.timestep_embedder(self.time_proj(timestep).to(dtype=hidden_dtype))
        if not self.use_additional_conditions:
            return emb  # type: ignore[no-any-return]
        if resolution is None or aspect_ratio is None or batch_size is None:
            raise ValueError("this model uses resolution and aspect_ratio conditioning: pass both in added_cond_kwargs")
        res = self.additional_condition_proj(resolution.flatten()).to(hidden_dtype)
        res = self.resolution_embedder(res).reshape(batch_size, -1)
        ar = self.additional_condition_proj(aspect_ratio.flatten()).to(hidden_dtype)
        ar = self.aspect_ratio_embedder(ar).reshape(batch_size, -1)
        return emb + torch.cat([res, ar], dim=1)  # type: ignore[no-any-return]


class PixArtAlphaTextProjection(nn.Module):
    """Caption projection: ``linear_1``, activation, ``linear_2``."""

    def __init__(
        self, in_features: int, hidden_size: int, out_features: int | None = None, act_fn: str = "gelu_tanh"
    ) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size, bias=True)
        self.act_1: nn.Module
        if act_fn == "gelu_tanh":
            self.act_1 = nn.GELU(approximate="tanh")
        elif act_fn == "silu":
            self.act_1 = nn.SiLU()
        else:
            raise ValueError(f"unknown act_fn {act_fn!r}; expected 'gelu_tanh' or 'silu'")
        self.linear_2 = nn.Linear(hidden_size, out_features if out_features is not None else hidden_size, bias=True)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))  # type: ignore[no-any-return]


def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``(M, embed_dim)`` ``[sin, cos]`` embedding of positions ``pos``, computed in float64."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(
    embed_dim: int,
    grid_size: int | tuple[int, int],
    base_size: int = 16,
    interpolation_scale: float = 1.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """2-d sin-cos position embedding ``(H * W, embed_dim)``: half the channels for each axis."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    ys = torch.arange(gh, dtype=torch.float32, device=device) / (gh / base_size) / interpolation_scale
    xs = torch.arange(gw, dtype=torch.float32, device=device) / (gw / base_size) / interpolation_scale
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")  # (gh, gw): x varies along a row
    emb_a = get_1d_sincos_pos_embed(embed_dim // 2, grid_x.reshape(-1))
    emb_b = get_1d_sincos_pos_embed(embed_dim // 2, grid_y.reshape(-1))
    return torch.cat([emb_a, emb_b], dim=1)


class PatchEmbed(nn.Module):
    """Image to patch tokens plus a fixed 2-d sin-cos position embedding (DiT, PixArt).

    Keys: ``proj`` (the patchifying convolution); ``pos_embed`` is a non-persistent buffer.
    """

    def __init__(
        self,
        height: int = 224,
        width: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        layer_norm: bool = False,
        flatten: bool = True,
        bias: bool = True,
        interpolation_scale: float = 1,
        pos_embed_type: str | None = "sincos",
    ) -> None:
        super().__init__()
        self.flatten = flatten
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=1e-6) if layer_norm else None
        self.height, self.width = height // patch_size, width // patch_size
        self.base_size = height // patch_size
        self.interpolation_scale = interpolation_scale
        self.pos_embed: torch.Tensor | None
        if pos_embed_type is None:
            self.pos_embed = None
        elif pos_embed_type == "sincos":
            grid = int(((height // patch_size) * (width // patch_size)) ** 0.5)
            pe = get_2d_sincos_pos_embed(
                embed_dim, grid, base_size=self.base_size, interpolation_scale=interpolation_scale
            )
            self.register_buffer("pos_embed", pe.float().unsqueeze(0), persistent=False)
        else:
            raise ValueError(f"unknown pos_embed_type {pos_embed_type!r}; expected 'sincos' or None")

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        height, width = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        latent = self.proj(latent)
        if self.flatten:
            latent = latent.flatten(2).transpose(1, 2)
        if self.norm is not None:
            latent = self.norm(latent)
        if self.pos_embed is None:
            return latent
        if (height, width) != (self.height, self.width):
            pos = get_2d_sincos_pos_embed(
                self.pos_embed.shape[-1],
                (height, width),
                base_size=self.base_size,
                interpolation_scale=self.interpolation_scale,
                device=latent.device,
            )
            pos = pos.float().unsqueeze(0)
        else:
            pos = self.pos_embed
        return (latent + pos).to(latent.dtype)


# -- GLIGEN grounding tokens -------------------------------------------------------------------


def fourier_box_embedding(freqs: int, boxes: torch.Tensor) -> torch.Tensor:
    """Sin/cos features of box corners, GLIGEN's position encoding: ``boxes`` ``(batch, n, 4)``
    (``xyxy`` in ``[0, 1]``) to ``(batch, n, freqs * 2 * 4)``, frequencies ``100 ** (i / freqs)``,
    grouped per frequency as ``[sin, cos] x [x0, y0, x1, y1]``."""
    b, n = boxes.shape[:2]
    scales = 100 ** (torch.arange(freqs) / freqs)
    angles = scales.to(device=boxes.device, dtype=boxes.dtype)[None, None, None] * boxes.unsqueeze(-1)
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (b, n, 4, freqs, 2)
    return emb.permute(0, 1, 3, 4, 2).reshape(b, n, freqs * 2 * 4)


def _grounding_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(), nn.Linear(512, out_dim))


class GLIGENTextBoundingboxProjection(nn.Module):
    """GLIGEN's position net (Li et al., 2023): one grounding token per box from its phrase (and,
    ``feature_type="text-image"``, image) embedding and the Fourier features of its corners.

    Keys: ``linears`` (text-only) or ``linears_text`` + ``linears_image``; ``null_positive_feature``
    (text-only) or ``null_text_feature`` + ``null_image_feature``; ``null_position_feature``. Padded
    boxes (``masks`` 0) use the learned null features.
    """

    def __init__(
        self, positive_len: int, out_dim: int | tuple[int, ...], feature_type: str = "text-only", fourier_freqs: int = 8
    ) -> None:
        super().__init__()
        if feature_type not in ("text-only", "text-image"):
            raise ValueError(f"unknown feature_type {feature_type!r}; expected 'text-only' or 'text-image'")
        self.positive_len = positive_len
        self.out_dim = out_dim
        self.fourier_embedder_dim = fourier_freqs
        self.position_dim = fourier_freqs * 2 * 4
        width = out_dim[0] if isinstance(out_dim, tuple) else out_dim
        if feature_type == "text-only":
            self.linears = _grounding_mlp(positive_len + self.position_dim, width)
            self.null_positive_feature = nn.Parameter(torch.zeros([positive_len]))
        else:
            self.linears_text = _grounding_mlp(positive_len + self.position_dim, width)
            self.linears_image = _grounding_mlp(positive_len + self.position_dim, width)
            self.null_text_feature = nn.Parameter(torch.zeros([positive_len]))
            self.null_image_feature = nn.Parameter(torch.zeros([positive_len]))
        self.null_position_feature = nn.Parameter(torch.zeros([self.position_dim]))

    def forward(
        self,
        boxes: torch.Tensor,
        masks: torch.Tensor,
        positive_embeddings: torch.Tensor | None = None,
        phrases_masks: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        phrases_embeddings: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Grounding tokens ``(batch, n, out_dim)`` (text-image: ``(batch, 2 n, out_dim)``, text then image).

        ``boxes``: ``(batch, n, 4)``; ``masks``: ``(batch, n)`` 1 for a real box. Text-only takes
        ``positive_embeddings`` ``(batch, n, positive_len)``; text-image takes ``phrases_embeddings``,
        ``image_embeddings`` and their ``phrases_masks`` / ``image_masks``.

        :raises ValueError: when the embeddings of the configured feature type are missing.
        """
        keep = masks.unsqueeze(-1)
        xyxy = fourier_box_embedding(self.fourier_embedder_dim, boxes)
        xyxy = xyxy * keep + (1 - keep) * self.null_position_feature.view(1, 1, -1)
        if positive_embeddings is not None:
            if not hasattr(self, "linears"):
                raise ValueError("GLIGENTextBoundingboxProjection(text-image) takes phrases_/image_embeddings")
            positive = positive_embeddings * keep + (1 - keep) * self.null_positive_feature.view(1, 1, -1)
            out: torch.Tensor = self.linears(torch.cat([positive, xyxy], dim=-1))
            return out
        if phrases_embeddings is None or image_embeddings is None or phrases_masks is None or image_masks is None:
            raise ValueError(
                "GLIGENTextBoundingboxProjection: pass positive_embeddings (text-only), or phrases_embeddings, "
                "image_embeddings, phrases_masks and image_masks (text-image)"
            )
        if not hasattr(self, "linears_text"):
            raise ValueError("GLIGENTextBoundingboxProjection(text-only) takes positive_embeddings")
        pm, im = phrases_masks.unsqueeze(-1), image_masks.unsqueeze(-1)
        phrases = phrases_embeddings * pm + (1 - pm) * self.null_text_feature.view(1, 1, -1)
        images = image_embeddings * im + (1 - im) * self.null_image_feature.view(1, 1, -1)
        text_tokens = self.linears_text(torch.cat([phrases, xyxy], dim=-1))
        image_tokens = self.linears_image(torch.cat([images, xyxy], dim=-1))
        return torch.cat([text_tokens, image_tokens], dim=1)
