"""VQDiffusionPipeline against Diffusers' pipeline built in memory from the same weights (Diffusers 0.42.1
cannot reload the folder it saves); difflux loads that published-layout folder."""

from __future__ import annotations

from typing import Any

import pytest
import torch

PROMPT = "a photo of a red cat"
PIXEL_TOL = 1 / 255


@pytest.mark.parametrize(
    ("which", "options"),
    [
        ("learned", {}),
        ("learned", {"truncation_rate": 0.6, "num_images_per_prompt": 2}),
        ("empty", {"guidance_scale": 3.0}),
        ("empty", {"guidance_scale": 1.0, "truncation_rate": 0.9}),
    ],
    ids=["learned-cfg", "learned-truncated-2-per-prompt", "empty-caption-cfg", "no-cfg"],
)
def test_parity_with_the_in_memory_oracle(
    cl: Any, vq_pairs: dict[str, Any], which: str, options: dict[str, Any]
) -> None:
    ref, ours, _ = vq_pairs[which]
    kw = {"prompt": [PROMPT, "a dog"], "num_inference_steps": 4, **options}
    a = ref(**kw, generator=cl.gen(0), output_type="np").images
    b = ours(**kw, generator=cl.gen(0), output_type="np").images
    assert a.shape == b.shape == (2 * options.get("num_images_per_prompt", 1), 12, 12, 3)
    assert cl.max_diff(a, b) <= PIXEL_TOL
    codes = ours(**kw, generator=cl.gen(0), output_type="latent").images
    assert codes.dtype == torch.int64 and codes.shape == (a.shape[0], 36) and int(codes.max()) < 12


def test_loads_the_published_layout_and_round_trips(cl: Any, vq_pairs: dict[str, Any], tmp_path: Any) -> None:
    import json
    import shutil

    from difflux_models.transformers import Transformer2DModel
    from difflux_pipelines_classic import LearnedClassifierFreeSamplingEmbeddings, VQDiffusionPipeline
    from difflux_schedulers import VQDiffusionScheduler

    ref, ours, folder = vq_pairs["learned"]
    # Diffusers 0.42.1 writes the library as "diffusers"; the published microsoft/vq-diffusion-ithq folder
    # names the pipeline module, "vq_diffusion"; both load
    published = tmp_path / "published"
    shutil.copytree(folder, published)
    index = json.loads((published / "model_index.json").read_text())
    entry = ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"]
    (published / "model_index.json").write_text(
        json.dumps({**index, "learned_classifier_free_sampling_embeddings": entry})
    )
    loaded = cl.load_difflux(published)
    assert type(loaded.learned_classifier_free_sampling_embeddings) is LearnedClassifierFreeSamplingEmbeddings
    assert type(ours) is VQDiffusionPipeline
    assert type(ours.transformer) is Transformer2DModel and type(ours.scheduler) is VQDiffusionScheduler
    learned = ours.learned_classifier_free_sampling_embeddings
    assert type(learned) is LearnedClassifierFreeSamplingEmbeddings
    assert torch.equal(learned.embeddings, ref.learned_classifier_free_sampling_embeddings.embeddings)
    ours.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())[
        "learned_classifier_free_sampling_embeddings"
    ] == ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"]
    again = cl.load_difflux(tmp_path / "again")
    kw = {"prompt": PROMPT, "num_inference_steps": 3, "output_type": "np"}
    assert cl.max_diff(again(**kw, generator=cl.gen(5)).images, ours(**kw, generator=cl.gen(5)).images) == 0.0


def test_callbacks_and_given_latents(cl: Any, vq_pairs: dict[str, Any]) -> None:
    _, ours, _ = vq_pairs["empty"]
    seen: list[int] = []

    def record(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        seen.append(int(t))

    start = torch.full((1, 36), 12)
    start[0, :6] = torch.arange(6)
    ours(PROMPT, num_inference_steps=3, latents=start, callback_on_step_end=record, generator=cl.gen(1))
    assert seen == [2, 1, 0]
    legacy: list[int] = []
    with pytest.warns(FutureWarning):
        ours(PROMPT, num_inference_steps=2, callback=lambda i, t, x: legacy.append(i), callback_steps=1)
    assert legacy == [0, 1]


def test_truncate_matches_diffusers() -> None:
    from difflux_pipelines_classic.vq_diffusion import truncate
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import VQDiffusionPipeline as Ref

    log_p = torch.log_softmax(torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    for rate in (0.1, 0.5, 0.95, 1.0):
        assert torch.equal(truncate(log_p, rate), Ref.truncate(None, log_p, rate))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": None}, ValueError, "prompt"),
        ({"prompt": []}, ValueError, "prompt"),
        ({"truncation_rate": 0.0}, ValueError, "truncation_rate"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"latents": torch.zeros(1, 35, dtype=torch.long)}, ValueError, "latents"),
        ({"latents": torch.full((1, 36), 13)}, ValueError, "integer codes"),
        ({"generator": [torch.Generator()]}, TypeError, "one torch.Generator"),
        ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["x"]}, ValueError, "'x'"),
    ],
    ids=["no-prompt", "empty", "rate", "steps", "images", "output-type", "latents-shape", "latents-range",
         "generator-list", "callback-names"],
)  # fmt: skip
def test_bad_input_fails_before_any_model_runs(
    vq_pairs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], error: Any, match: str
) -> None:
    _, ours, _ = vq_pairs["learned"]
    calls: list[str] = []
    for name in ("text_encoder", "transformer", "vqvae"):
        monkeypatch.setattr(getattr(ours, name), "forward", lambda *a, _n=name, **k: calls.append(_n))
    with pytest.raises(error, match=match):
        ours(**{"prompt": PROMPT, "num_inference_steps": 2, **kwargs})
    assert calls == []


def test_learned_embeddings_need_their_sizes() -> None:
    from difflux_pipelines_classic import LearnedClassifierFreeSamplingEmbeddings

    with pytest.raises(ValueError, match="hidden_size and length"):
        LearnedClassifierFreeSamplingEmbeddings(learnable=True, hidden_size=32)
    assert LearnedClassifierFreeSamplingEmbeddings(learnable=False).embeddings.numel() == 0
