"""Layer-level parity with diffusers: same keys, same outputs on copied weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.attention import attention_backend
from difflux_models import layers
from difflux_models.layers import fir
from diffusers.models import attention as d_attention
from diffusers.models import embeddings as d_emb
from diffusers.models import resnet as d_resnet
from diffusers.models import upsampling as d_up
from diffusers.models.transformers.transformer_2d import Transformer2DModel as DTransformer2DModel


def _pair(kit: Any, ref: torch.nn.Module, ours: torch.nn.Module) -> None:
    torch.manual_seed(0)
    kit.perturb_(ref)
    kit.copy_weights(ref, ours)
    ref.eval()
    ours.eval()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cross_attention_dim": 12},
        {"cross_attention_dim": 12, "only_cross_attention": True},
        {"double_self_attention": True, "activation_fn": "gelu"},
        {"activation_fn": "gelu-approximate", "attention_bias": True},
        {"activation_fn": "geglu-approximate", "upcast_attention": True},
        {"norm_type": "ada_norm_zero", "num_embeds_ada_norm": 10},
        {"norm_type": "ada_norm_single", "cross_attention_dim": 12, "norm_elementwise_affine": False},
        {"norm_type": "ada_norm", "num_embeds_ada_norm": 10, "cross_attention_dim": 12},
    ],
    ids=["self", "cross", "only_cross", "double_self", "gelu_tanh", "approx", "ada_zero", "ada_single", "ada"],
)
def test_basic_transformer_block(kit: Any, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ref = d_attention.BasicTransformerBlock(16, 2, 8, **options)
    ours = layers.BasicTransformerBlock(16, 2, 8, **options)
    _pair(kit, ref, ours)
    x = kit.randn(2, 6, 16)
    kwargs: dict[str, Any] = {}
    if options.get("cross_attention_dim"):
        kwargs["encoder_hidden_states"] = kit.randn(2, 5, 12, seed=1)
    norm = options.get("norm_type")
    if norm == "ada_norm_zero":
        kwargs["timestep"] = torch.tensor([3, 7])
        kwargs["class_labels"] = torch.tensor([1, 4])
    elif norm == "ada_norm_single":
        kwargs["timestep"] = kit.randn(2, 6 * 16, seed=2)
    elif norm == "ada_norm":
        kwargs["timestep"] = torch.tensor(3)
    with torch.no_grad():
        kit.assert_close(ours(x, **kwargs), ref(x, **kwargs))


def test_attention_mask_and_fusion(kit: Any) -> None:
    torch.manual_seed(0)
    ref = d_attention.BasicTransformerBlock(16, 2, 8, cross_attention_dim=12)
    ours = layers.BasicTransformerBlock(16, 2, 8, cross_attention_dim=12)
    _pair(kit, ref, ours)
    x, ctx = kit.randn(2, 6, 16), kit.randn(2, 5, 12, seed=1)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    bias = ((1 - keep.float()) * -10000.0).unsqueeze(1)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx, encoder_attention_mask=bias)
        kit.assert_close(ours(x, encoder_hidden_states=ctx, encoder_attention_mask=bias), expected)
        unmasked = ours(x, encoder_hidden_states=ctx)
        assert (unmasked - expected).abs().max() > 1e-3  # the mask matters
        ours.attn1.fuse_projections()
        ours.attn2.fuse_projections()
        assert "attn1.to_qkv.weight" in ours.state_dict() and "attn2.to_kv.weight" in ours.state_dict()
        kit.assert_close(ours(x, encoder_hidden_states=ctx, encoder_attention_mask=bias), expected)
        ours.attn1.unfuse_projections()
        ours.attn2.unfuse_projections()
        assert "attn1.to_qkv.weight" not in ours.state_dict()


def test_attention_goes_through_dispatch(kit: Any) -> None:
    ours = layers.Attention(16, heads=2, dim_head=8).eval()
    x = kit.randn(1, 4, 16)
    calls: list[str] = []
    with torch.no_grad(), attention_backend("reference"):
        a = ours(x)
    ours.attention_backend = "reference"

    class Spy(layers.AttnProcessor):
        def __call__(self, attn: layers.Attention, hidden_states: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
            calls.append(attn.attention_backend or "")
            return super().__call__(attn, hidden_states, *args, **kw)

    ours.set_processor(Spy())
    with torch.no_grad():
        b = ours(x)
    assert calls == ["reference"]
    kit.assert_close(a, b, 1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"in_channels": 8, "out_channels": 16, "temb_channels": 12, "groups": 4},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "time_embedding_norm": "scale_shift"},
        {"in_channels": 8, "temb_channels": None, "groups": 4, "output_scale_factor": 2.0, "up": True},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "down": True, "skip_time_act": True},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "up": True, "kernel": "fir"},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "down": True, "kernel": "fir"},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "down": True, "kernel": "sde_vp"},
        {"in_channels": 8, "out_channels": 8, "temb_channels": 12, "groups": 4, "use_in_shortcut": True},
    ],
    ids=["default", "scale_shift", "up", "down", "fir_up", "fir_down", "sde_vp", "shortcut"],
)
def test_resnet_block(kit: Any, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ref = d_resnet.ResnetBlock2D(**options)
    ours = layers.ResnetBlock2D(**options)
    _pair(kit, ref, ours)
    x = kit.randn(2, 8, 8, 8)
    temb = kit.randn(2, 12, seed=1) if options["temb_channels"] else None
    with torch.no_grad():
        kit.assert_close(ours(x, temb), ref(x, temb))


def test_residual_temporal_block(kit: Any) -> None:
    torch.manual_seed(0)
    ref = d_resnet.ResidualTemporalBlock1D(8, 16, 12)
    ours = layers.ResidualTemporalBlock1D(8, 16, 12)
    _pair(kit, ref, ours)
    x, t = kit.randn(2, 8, 10), kit.randn(2, 12, seed=1)
    with torch.no_grad():
        kit.assert_close(ours(x, t), ref(x, t))


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_spatial_transformer(kit: Any, use_linear_projection: bool) -> None:
    options = {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "in_channels": 16,
        "num_layers": 2,
        "norm_num_groups": 4,
        "cross_attention_dim": 12,
        "use_linear_projection": use_linear_projection,
    }
    torch.manual_seed(0)
    ref = DTransformer2DModel(**options)
    ours = layers.SpatialTransformer2D(**options)
    _pair(kit, ref, ours)
    x, ctx = kit.randn(2, 16, 4, 4), kit.randn(2, 5, 12, seed=1)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        kit.assert_close(ours(x, encoder_hidden_states=ctx, encoder_attention_mask=mask), expected)


def test_embeddings(kit: Any) -> None:
    t = torch.tensor([0.0, 3.0, 999.0])
    for flip, shift, dim in [(True, 0, 32), (False, 1, 33)]:
        kit.assert_close(
            layers.get_timestep_embedding(t, dim, flip, shift), d_emb.get_timestep_embedding(t, dim, flip, shift), 1e-6
        )
    torch.manual_seed(0)
    ref_f = d_emb.GaussianFourierProjection(8, scale=16.0, flip_sin_to_cos=True)
    ours_f = layers.GaussianFourierProjection(8, scale=16.0, flip_sin_to_cos=True)
    kit.copy_weights(ref_f, ours_f)
    sigma = torch.tensor([0.5, 2.0])
    kit.assert_close(ours_f(sigma), ref_f(sigma), 1e-5)
    for grid in [4, (3, 5)]:
        kit.assert_close(
            layers.get_2d_sincos_pos_embed(16, grid, base_size=4, interpolation_scale=2.0),
            d_emb.get_2d_sincos_pos_embed(16, grid, base_size=4, interpolation_scale=2.0),
            1e-6,
        )
    torch.manual_seed(0)
    ref_p = d_emb.PatchEmbed(8, 8, 2, 4, 16)
    ours_p = layers.PatchEmbed(8, 8, 2, 4, 16)
    kit.copy_weights(ref_p, ours_p)
    for size in (8, 12):
        x = kit.randn(2, 4, size, size)
        kit.assert_close(ours_p(x), ref_p(x), 1e-5)
    torch.manual_seed(0)
    ref_s = d_emb.PixArtAlphaCombinedTimestepSizeEmbeddings(24, 8, use_additional_conditions=True)
    ours_s = layers.PixArtAlphaCombinedTimestepSizeEmbeddings(24, 8, use_additional_conditions=True)
    kit.copy_weights(ref_s, ours_s)
    args = (torch.tensor([1.0, 500.0]), torch.tensor([[64.0, 64.0], [32.0, 48.0]]), torch.tensor([[1.0], [1.5]]), 2)
    kit.assert_close(ours_s(*args, hidden_dtype=torch.float32), ref_s(*args, hidden_dtype=torch.float32), 1e-5)


@pytest.mark.parametrize("factor", [2])
def test_fir_resampling(kit: Any, factor: int) -> None:
    x = kit.randn(2, 3, 8, 8)
    kernel = (1, 3, 3, 1)
    kit.assert_close(fir.upsample_2d(x, kernel, factor), d_up.upsample_2d(x, kernel, factor), 1e-5)
    from diffusers.models import downsampling as d_down

    kit.assert_close(fir.downsample_2d(x, kernel, factor), d_down.downsample_2d(x, kernel, factor), 1e-5)


def test_processors_mixin() -> None:
    class Holder(torch.nn.Module, layers.AttentionProcessorMixin):
        def __init__(self) -> None:
            super().__init__()
            self.block = layers.BasicTransformerBlock(16, 2, 8, cross_attention_dim=12)

    model = Holder()
    procs = model.attn_processors
    assert sorted(procs) == ["block.attn1.processor", "block.attn2.processor"]
    custom = layers.AttnProcessor()
    model.set_attn_processor({**procs, "block.attn2.processor": custom})
    assert model.block.attn2.processor is custom and model.block.attn1.processor is not custom
    with pytest.raises(ValueError, match=r"block\.attn1\.processor"):
        model.set_attn_processor({"block.attn2.processor": custom})
    model.set_attn_processor(custom)
    assert all(p is custom for p in model.attn_processors.values())


@pytest.mark.parametrize(
    "options",
    [
        {"in_channels": 8, "out_channels": 16, "temb_channels": 12, "groups": 4},
        {"in_channels": 8, "temb_channels": None, "groups": 4, "output_scale_factor": 2.0},
        {"in_channels": 8, "temb_channels": 12, "groups": 4, "non_linearity": "mish", "up": True},
    ],
    ids=["shortcut_temb", "scale", "mish_up"],
)
def test_resnet_block_in_place_paths(kit: Any, options: dict[str, Any]) -> None:
    """Without autograd the block overwrites its own intermediates: the inputs stay untouched and
    the result is bit-identical to the out-of-place (autograd) path, which still backpropagates."""
    torch.manual_seed(0)
    block = layers.ResnetBlock2D(**options).eval()
    kit.perturb_(block)
    x = kit.randn(2, 8, 8, 8)
    temb = kit.randn(2, 12, seed=1) if options["temb_channels"] else None
    x_before = x.clone()
    temb_before = temb.clone() if temb is not None else None
    with torch.inference_mode():
        fast = block(x, temb)
    assert torch.equal(x, x_before)
    if temb is not None:
        assert temb_before is not None and torch.equal(temb, temb_before)
    xg = x.clone().requires_grad_(True)
    slow = block(xg, temb)
    assert torch.equal(fast, slow.detach())
    slow.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_in_place_paths_respect_hooks(kit: Any) -> None:
    """An output a forward hook kept is not overwritten afterwards; the activation's hook runs."""
    torch.manual_seed(0)
    block = layers.ResnetBlock2D(in_channels=8, temb_channels=None, groups=4).eval()
    kit.perturb_(block)
    kept: dict[str, torch.Tensor] = {}
    for name in ("norm1", "norm2", "conv2"):
        getattr(block, name).register_forward_hook(lambda _m, _i, out, name=name: kept.update({name: out}))
    calls: list[bool] = []
    block.nonlinearity.register_forward_hook(lambda *_: calls.append(True))
    x = kit.randn(2, 8, 8, 8)
    with torch.no_grad():
        out = block(x, None)
        assert torch.equal(kept["norm1"], block.norm1(x))
        assert torch.equal(out, x + kept["conv2"])
    assert len(calls) == 2
