"""PixArt's pure parts against Diffusers: bucket tables, bucket choice, resize-and-crop, caption cleaning."""

from __future__ import annotations

import pytest
import torch
from difflux_pixart import aspect_ratios, captions


def test_bucket_tables_match_the_published_ones() -> None:
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    for name, ref in (
        ("ASPECT_RATIO_256_BIN", alpha.ASPECT_RATIO_256_BIN),
        ("ASPECT_RATIO_512_BIN", alpha.ASPECT_RATIO_512_BIN),
        ("ASPECT_RATIO_1024_BIN", alpha.ASPECT_RATIO_1024_BIN),
        ("ASPECT_RATIO_2048_BIN", sigma.ASPECT_RATIO_2048_BIN),
    ):
        ours = getattr(aspect_ratios, name)
        assert list(ours) == list(ref), name
        assert {k: list(v) for k, v in ours.items()} == ref, name
    assert aspect_ratios.bins_for(256, "p", sigma=True) is aspect_ratios.ASPECT_RATIO_2048_BIN
    with pytest.raises(ValueError, match="use_resolution_binning=False"):
        aspect_ratios.bins_for(256, "p")


@pytest.mark.parametrize("size", [(1024, 1024), (600, 1400), (1400, 600), (512, 2100), (333, 999), (720, 1280)])
def test_bucket_choice_and_resize_match_diffusers(size: tuple[int, int]) -> None:
    from diffusers.image_processor import PixArtImageProcessor

    table = aspect_ratios.ASPECT_RATIO_1024_BIN
    h, w = size
    assert aspect_ratios.classify_height_width_bin(h, w, table) == PixArtImageProcessor.classify_height_width_bin(
        h, w, ratios=table
    )
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    ref = PixArtImageProcessor.resize_and_crop_tensor(images, w // 20, h // 20)
    ours = aspect_ratios.resize_and_crop_tensor(images, w // 20, h // 20)
    assert ours.shape == ref.shape == (2, 3, h // 20, w // 20)
    assert torch.equal(ours, ref)


CAPTIONS = [
    "A photo of a cat &amp; dog, https://example.com/cat.jpg <b>bold</b> @someone",
    "“Quoted”  text — with dashes… and \u2018quotes\u2019 #123 #12345678 1234567 image.png",
    "this-is-my-cute-cat_photo page 12 free shipping click for more 1920x1080 jc6640 ab12cd34",
    "  ***AUSVERKAUFT***  192.168.0.1 日本語テキスト 3:45  ",
    "'hello: world ,   ok.' ",
]


@pytest.mark.skipif(not captions.caption_cleaning_available(), reason="needs beautifulsoup4 and ftfy")
@pytest.mark.parametrize("caption", CAPTIONS)
def test_clean_caption_matches_diffusers(caption: str) -> None:
    import diffusers

    ref = diffusers.PixArtAlphaPipeline._text_preprocessing(
        diffusers.PixArtAlphaPipeline.__new__(diffusers.PixArtAlphaPipeline), caption, clean_caption=True
    )
    assert captions.preprocess_captions(caption, True) == ref


def test_plain_preprocessing_lowercases_and_strips() -> None:
    assert captions.preprocess_captions(["  A Red CAT "], False) == ["a red cat"]
