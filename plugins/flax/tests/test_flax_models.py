"""Flax UNet, VAE and CLIP text encoder against difflux's PyTorch models on the same folder (fp32 CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from difflux_flax.clip import FlaxCLIPTextModel
from difflux_flax.modeling import ParamsError
from difflux_flax.unet import FlaxUNet2DConditionModel
from difflux_flax.vae import FlaxAutoencoderKL


@pytest.fixture(scope="module")
def flax_unet(sd_folder: Path) -> tuple[Any, Any]:
    return FlaxUNet2DConditionModel.from_pretrained(sd_folder, "unet")


@pytest.fixture(scope="module")
def flax_vae(sd_folder: Path) -> tuple[Any, Any]:
    return FlaxAutoencoderKL.from_pretrained(sd_folder, "vae")


def test_unet_matches_pytorch(flax_unet: tuple[Any, Any], torch_sd: Any) -> None:
    unet, params = flax_unet
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
    with torch.no_grad():
        ref = torch_sd.unet(torch.from_numpy(x), torch.tensor([10, 500]), torch.from_numpy(ctx)).sample.numpy()
    got = np.asarray(jax.jit(unet.apply)({"params": params}, x, jnp.array([10, 500]), ctx).sample)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_unet_linear_projection_and_heads_list(tmp_path: Path) -> None:
    """SD 2.x options: linear proj_in / proj_out and per-block head counts, checked against PyTorch."""
    import diffusers

    torch.manual_seed(1)
    config = dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        flip_sin_to_cos=False,
        freq_shift=1,
    )
    diffusers.UNet2DConditionModel(**config).save_pretrained(tmp_path)
    from difflux_models import UNet2DConditionModel

    ref_model = UNet2DConditionModel.from_pretrained(tmp_path).eval()
    unet, params = FlaxUNet2DConditionModel.from_pretrained(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((1, 5, 16)).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x), 3, torch.from_numpy(ctx)).sample.numpy()
    got = np.asarray(jax.jit(unet.apply)({"params": params}, x, 3, ctx).sample)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_vae_encode_decode_match_pytorch(flax_vae: tuple[Any, Any], torch_sd: Any) -> None:
    vae, params = flax_vae
    rng = np.random.default_rng(2)
    img = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    z = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        dist = torch_sd.vae.encode(torch.from_numpy(img)).latent_dist
        ref_dec = torch_sd.vae.decode(torch.from_numpy(z)).sample.numpy()
    got = jax.jit(lambda p, a: vae.apply({"params": p}, a, method=vae.encode))(params, img)
    np.testing.assert_allclose(np.asarray(got.mean), dist.mean.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got.logvar), dist.logvar.numpy(), atol=1e-4, rtol=0)
    decoded = jax.jit(lambda p, a: vae.apply({"params": p}, a, method=vae.decode))(params, z)
    np.testing.assert_allclose(np.asarray(decoded), ref_dec, atol=1e-4, rtol=0)


def test_clip_text_encoder_matches_transformers(sd_folder: Path, torch_sd: Any) -> None:
    model, params = FlaxCLIPTextModel.from_pretrained(sd_folder, "text_encoder")
    ids = torch_sd.tokenizer(["a cat", "a dog and"], padding="max_length", max_length=77, return_tensors="np").input_ids
    with torch.no_grad():
        ref = torch_sd.text_encoder(torch.from_numpy(ids), output_hidden_states=True)
    got = jax.jit(lambda p, i: model.apply({"params": p}, i, output_hidden_states=True))(params, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(got.last_hidden_state), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got.pooler_output), ref.pooler_output.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got.hidden_states[-2]), ref.hidden_states[-2].numpy(), atol=1e-4, rtol=0)


def test_save_pretrained_round_trips_through_pytorch(flax_vae: tuple[Any, Any], tmp_path: Path, torch_sd: Any) -> None:
    """Flax -> PyTorch layout on disk -> difflux's PyTorch AutoencoderKL: the same weights."""
    from difflux_models import AutoencoderKL

    vae, params = flax_vae
    vae.save_pretrained(tmp_path / "vae", params)
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    back = AutoencoderKL.from_pretrained(tmp_path / "vae")
    for key, value in torch_sd.vae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0)
    assert not list((tmp_path / "vae").glob("*.tmp"))


def test_clip_save_writes_the_published_key_layout(sd_folder: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    model, params = FlaxCLIPTextModel.from_pretrained(sd_folder, "text_encoder")
    model.save_pretrained(tmp_path, params, config=json.loads((sd_folder / "text_encoder" / "config.json").read_text()))
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "text_model.embeddings.token_embedding.weight" in keys
    _, params2 = FlaxCLIPTextModel.from_pretrained(tmp_path)
    flat, flat2 = jax.tree_util.tree_leaves_with_path(params), dict(jax.tree_util.tree_leaves_with_path(params2))
    for path, leaf in flat:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat2[path]))


def test_weights_that_do_not_fit_the_config_name_the_keys(sd_folder: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(sd_folder / "vae", tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ParamsError, match=r"mis-shaped .*quant_conv"):
        FlaxAutoencoderKL.from_pretrained(tmp_path, "vae")


def test_unsupported_config_and_bad_dtype_are_refused(sd_folder: Path) -> None:
    with pytest.raises(ValueError, match="addition_embed_type"):
        FlaxUNet2DConditionModel.from_config({"addition_embed_type": "text_time"})
    with pytest.raises(TypeError, match="floating dtype"):
        FlaxUNet2DConditionModel.from_pretrained(sd_folder, "unet", dtype=jnp.int32)
    with pytest.raises(OSError, match=r"no config\.json"):
        FlaxAutoencoderKL.from_pretrained(sd_folder, "nothing")


def test_params_tree_check(flax_vae: tuple[Any, Any]) -> None:
    vae, params = flax_vae
    vae.check_params(params)
    broken = jax.tree_util.tree_map(lambda a: a, params)
    broken["decoder"]["conv_in"]["kernel"] = jnp.zeros((1, 1, 1, 1))
    with pytest.raises(ParamsError, match="decoder/conv_in/kernel has shape"):
        vae.check_params(broken)
    del broken["decoder"]
    with pytest.raises(ParamsError, match="missing"):
        vae.check_params(broken)


def test_bfloat16_load_computes_in_bfloat16(sd_folder: Path) -> None:
    vae, params = FlaxAutoencoderKL.from_pretrained(sd_folder, "vae", dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    out = jax.eval_shape(lambda p: vae.apply({"params": p}, jnp.zeros((1, 4, 4, 4)), method=vae.decode), params)
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 3, 8, 8)
