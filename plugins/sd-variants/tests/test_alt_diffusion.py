"""AltDiffusion (txt2img, img2img) and its XLM-R text encoder against Diffusers' in-memory pipelines.

Diffusers 0.42.1 cannot reload an AltDiffusion folder (its RobertaSeriesModelWithTransformation is not exported
at its top level), so the reference runs in memory; difflux loads the folder Diffusers saved (the published layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

VOCAB = ["▁a", "▁photo", "▁of", "▁cat", "▁dog", "▁red", "▁horse", "▁the", "▁on", "▁blue", "a", "c", "o", "t", "▁"]


def tiny_xlm_tokenizer() -> Any:
    """A tiny XLM-R (unigram) tokenizer, built offline."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece, -float(i)) for i, piece in enumerate(VOCAB, 1)] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=77)


def diffusers_text_encoder(seed: int = 0, **overrides: Any) -> Any:
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    config = RobertaSeriesConfig(hidden_size=32, project_dim=32, intermediate_size=37, layer_norm_eps=1e-5,
                                 num_attention_heads=4, num_hidden_layers=2, vocab_size=len(VOCAB) + 5,
                                 max_position_embeddings=80, **overrides)
    torch.manual_seed(seed)
    return RobertaSeriesModelWithTransformation(config).eval()


@pytest.fixture(scope="module")
def alt(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionImg2ImgPipeline, AltDiffusionPipeline

    folder = tmp_path_factory.mktemp("alt")
    text = {"text_encoder": diffusers_text_encoder(), "tokenizer": tiny_xlm_tokenizer()}
    components = {**sv.sd_components(folder), **text}
    ref = AltDiffusionPipeline(**components, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(folder / "alt")
    ours = sv.load_difflux(folder / "alt")
    ref2 = AltDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    ref2.set_progress_bar_config(disable=True)
    from difflux_sd_variants import AltDiffusionImg2ImgPipeline as Ours2

    ours2 = Ours2(**ours.components, requires_safety_checker=False)
    ours2.set_progress_bar_config(disable=True)
    return {"txt2img": (ref, ours), "img2img": (ref2, ours2), "folder": (folder / "alt", None)}


def test_alt_diffusion_folder_layouts(sv: Any, alt: Any, tmp_path: Path) -> None:
    """The folder Diffusers 0.42.1 writes (["diffusers", ...]) and the published one (["alt_diffusion", ...]) load."""
    import json
    import shutil

    folder, _ = alt["folder"]
    index = json.loads((Path(folder) / "model_index.json").read_text())
    assert index["text_encoder"] == ["diffusers", "RobertaSeriesModelWithTransformation"]
    _, ours = alt["txt2img"]
    assert type(ours).__name__ == "AltDiffusionPipeline"
    assert type(ours.text_encoder).__module__ == "difflux_sd_variants.roberta_series"
    published = shutil.copytree(folder, tmp_path / "published")
    index["text_encoder"] = ["alt_diffusion", "RobertaSeriesModelWithTransformation"]
    (published / "model_index.json").write_text(json.dumps(index))
    assert type(sv.load_difflux(published).text_encoder).__name__ == "RobertaSeriesModelWithTransformation"


@pytest.mark.parametrize("pre", [False, True])
def test_roberta_series_matches_diffusers(sv: Any, pre: bool, tmp_path: Path) -> None:
    from difflux_sd_variants import RobertaSeriesModelWithTransformation

    theirs = diffusers_text_encoder(1, has_pre_transformation=pre)
    theirs.save_pretrained(tmp_path)
    ours = RobertaSeriesModelWithTransformation.from_pretrained(tmp_path).eval()
    assert ours.has_pre_transformation is pre
    ids = tiny_xlm_tokenizer()(["a photo of a cat", "the dog"], padding="max_length", max_length=12,
                               return_tensors="pt")
    with torch.no_grad():
        a = theirs(ids.input_ids, attention_mask=ids.attention_mask)
        b = ours(ids.input_ids, attention_mask=ids.attention_mask)
    assert sv.max_diff(a[0], b[0]) <= 1e-5 and sv.max_diff(a.last_hidden_state, b.last_hidden_state) <= 1e-5


@pytest.mark.parametrize("options", [{"output_type": "np"}, {"negative_prompt": "a dog", "num_images_per_prompt": 2,
                                                             "output_type": "latent"}])
def test_alt_diffusion_parity(sv: Any, alt: Any, options: dict[str, Any]) -> None:
    ref, ours = alt["txt2img"]
    kw = {"prompt": "a photo of a cat", "num_inference_steps": 2, **options}
    a, b = ref(**kw, generator=sv.gen(0)), ours(**kw, generator=sv.gen(0))
    assert type(b).__name__ == "AltDiffusionPipelineOutput"
    tol = sv.LATENT_TOL if options["output_type"] == "latent" else sv.PIXEL_TOL
    assert sv.max_diff(a.images, b.images) <= tol


def test_alt_diffusion_img2img_parity(sv: Any, alt: Any) -> None:
    ref, ours = alt["img2img"]
    kw = {"prompt": "a red horse", "image": sv.image_input(6), "strength": 0.7, "num_inference_steps": 3,
          "output_type": "np"}
    assert sv.max_diff(ref(**kw, generator=sv.gen(2)).images, ours(**kw, generator=sv.gen(2)).images) <= sv.PIXEL_TOL


@pytest.mark.parametrize(("bad", "match"), [({"clip_skip": 1}, "clip_skip"), ({"prompt": 3}, "prompt")])
def test_alt_diffusion_bad_input(sv: Any, alt: Any, bad: dict[str, Any], match: str) -> None:
    _, ours = alt["txt2img"]
    with pytest.raises((ValueError, TypeError), match=match):
        ours(**{"prompt": "a cat", "num_inference_steps": 2, **bad})
