"""Issue 10 items 2-5 and issue 11 item 3 over the whole SD family.

Schedules cut only at whole steps; step callbacks that see and steer the run; one image per
generator; every input checked in the one validator before any model runs. Where Diffusers is
right it is the oracle; where it is wrong (second-order hand-off, custom timesteps with strength,
negative tensors a callback returns, per-output generators) the oracle is the run the user expects
(one full run, the same schedule without custom timesteps, the equivalent stacked tensor, a solo run).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import difflux_schedulers
import difflux_stable_diffusion
import numpy as np
import PIL.Image
import pytest
import torch
from difflux.pipeline_utils import cut_schedule

PROMPT = "a photo of a cat"
LATENT_TOL = 1e-4
SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
#: the public report's custom schedule
CUSTOM = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def picture(seed: int = 0, size: int = 32) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def mask(size: int = 32) -> PIL.Image.Image:
    m = np.zeros((size, size), dtype=np.uint8)
    m[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return PIL.Image.fromarray(m)


def diff(a: Any, b: Any) -> float:
    a = a.detach().double() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = b.detach().double() if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b, dtype=np.float64))
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return float((a - b).abs().max())


def scheduler(base: Any, name: str) -> Any:
    return getattr(difflux_schedulers, name).from_config(base.scheduler.config)


def build(base: Any, name: str, sched: Any = None, **changes: Any) -> Any:
    """A difflux pipeline ``name`` on ``base``'s components (a new object; the session pipelines stay untouched)."""
    cls = getattr(difflux_stable_diffusion, name)
    params = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in {**base.components, **changes}.items() if k in params}
    if sched is not None:
        components["scheduler"] = sched
    if "requires_safety_checker" in params:
        components["requires_safety_checker"] = False
    if "low_res_scheduler" in params:
        components["low_res_scheduler"] = difflux_schedulers.DDPMScheduler(**SCHED)
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(ref: Any, name: str, sched: str | None = None, **changes: Any) -> Any:
    """The Diffusers pipeline ``name`` on ``ref``'s components."""
    import diffusers

    cls = getattr(diffusers, name)
    components = {**ref.components, **changes}
    if sched is not None:
        components["scheduler"] = getattr(diffusers, sched).from_config(ref.scheduler.config)
    if "requires_safety_checker" in inspect.signature(cls.__init__).parameters:
        components["requires_safety_checker"] = False
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- item 2: cutting a schedule only at step boundaries ------------------------------------------------

CUT_SCHEDULERS = [
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DDIMScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
]
#: schedulers that take custom ``timesteps=`` (first and second order)
CUSTOM_SCHEDULERS = ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler"]


def _fresh(name: str, steps: int | None = None, custom: bool = False) -> Any:
    sched = getattr(difflux_schedulers, name)(**SCHED)
    if custom:
        sched.set_timesteps(timesteps=CUSTOM)
    else:
        sched.set_timesteps(steps)
    return sched


@pytest.mark.parametrize("name", CUT_SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 25])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.7, 0.8, 0.95])
def test_base_and_refiner_split_the_schedule_into_whole_steps(name: str, steps: int, fraction: float) -> None:
    """denoising_end=f and denoising_start=f take complementary whole steps: none repeated, none lost."""
    sched = _fresh(name, steps)
    order, length = sched.order, len(sched.timesteps)
    total = -(-length // order)
    starts = sched.timesteps[::order]
    cutoff = round(1000 - fraction * 1000)
    base_steps = int((starts >= cutoff).sum())
    if base_steps > 0:
        base = cut_schedule(sched, denoising_end=fraction)
        assert base.begin_index == 0 and base.num_steps == base_steps
        assert base.end_index == min(base_steps * order, length)
    else:
        with pytest.raises(ValueError, match=r"denoising_end=.* leaves no denoising steps"):
            cut_schedule(sched, denoising_end=fraction)
    if base_steps < total:
        refiner = cut_schedule(sched, denoising_start=fraction)
        assert refiner.begin_index == base_steps * order  # a step boundary, where the base stopped
        assert refiner.end_index == length and refiner.num_steps == total - base_steps
        assert sched.begin_index == refiner.begin_index
        assert bool((refiner.timesteps[::order] < cutoff).all())
    else:
        with pytest.raises(ValueError, match=r"denoising_start=.* leaves no denoising steps"):
            cut_schedule(sched, denoising_start=fraction)


@pytest.mark.parametrize("name", CUT_SCHEDULERS + ["custom:" + n for n in CUSTOM_SCHEDULERS])
@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5, 0.75, 0.9, 1.0])
def test_strength_runs_the_last_whole_steps(name: str, strength: float) -> None:
    """int(steps * strength) whole steps, from a step start; custom timesteps count steps, not positions."""
    custom = name.startswith("custom:")
    sched = _fresh(name.removeprefix("custom:"), 10, custom)
    order = sched.order
    run = int(10 * strength)
    cut = cut_schedule(sched, strength=strength)
    assert cut.num_steps == run and cut.total_steps == 10
    assert cut.begin_index == (10 - run) * order and sched.begin_index == cut.begin_index
    assert len(cut.timesteps) == len(sched.timesteps) - cut.begin_index
    if custom:
        assert float(cut.timesteps[0]) == CUSTOM[10 - run]


def test_no_denoising_steps_says_what_to_change() -> None:
    sched = _fresh("HeunDiscreteScheduler", custom=True)
    with pytest.raises(ValueError, match=r"strength=0.05 leaves no denoising steps out of 10 .*at least 0.1"):
        cut_schedule(sched, strength=0.05)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_sdxl_base_and_refiner_equal_one_full_run(sdxl_pair: Any, name: str) -> None:
    """The public report: base with denoising_end=0.7, refiner with denoising_start=0.7 (Heun / KDPM2)."""
    _, base0 = sdxl_pair
    sched = scheduler(base0, name)
    base = build(base0, "StableDiffusionXLPipeline", sched)
    refiner = build(base0, "StableDiffusionXLImg2ImgPipeline", sched)
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 5, "output_type": "latent"}
    full = base(**kw, generator=gen(0)).images
    handed = base(**kw, denoising_end=0.7, generator=gen(0)).images
    assert 0 < base.num_timesteps < len(sched.timesteps)
    out = refiner(**kw, image=handed, denoising_start=0.7, generator=gen(0)).images
    assert diff(out, full) <= 1e-5


def test_img2img_heun_custom_timesteps_match_the_same_schedule_by_count(sd_pair: Any) -> None:
    """Custom timesteps equal to a counted schedule give the same run, which matches Diffusers (right there)."""
    ref0, base0 = sd_pair
    import diffusers

    # both built from the same values (a swap keeps only the values the source config set, in both libraries)
    pipe = build(base0, "StableDiffusionImg2ImgPipeline", difflux_schedulers.HeunDiscreteScheduler(**SCHED))
    ref = reference(ref0, "StableDiffusionImg2ImgPipeline", scheduler=diffusers.HeunDiscreteScheduler(**SCHED))
    kw: dict[str, Any] = {"prompt": PROMPT, "image": picture(), "strength": 0.5, "output_type": "latent"}
    counted = pipe(**kw, num_inference_steps=6, generator=gen(1)).images
    oracle = ref(**kw, num_inference_steps=6, generator=gen(1)).images
    assert diff(counted, oracle) <= LATENT_TOL
    probe = pipe.scheduler
    probe.set_timesteps(6)
    values = [float(t) for t in probe.timesteps[::2]]
    custom = pipe(**kw, timesteps=values, generator=gen(1)).images
    assert diff(custom, counted) <= 1e-5


@pytest.mark.parametrize(("strength", "steps"), [(0.5, 5), (0.9, 9), (0.3, 3), (1.0, 10)])
def test_img2img_heun_public_report_schedule(sd_pair: Any, strength: float, steps: int) -> None:
    """timesteps=[999, 850, ...], strength 0.5: no empty schedule; 0.9: no lost step."""
    _, base0 = sd_pair
    pipe = build(base0, "StableDiffusionImg2ImgPipeline", scheduler(base0, "HeunDiscreteScheduler"))
    seen: list[float] = []

    def record(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        seen.append(float(t))

    out = pipe(
        PROMPT,
        image=picture(),
        strength=strength,
        timesteps=CUSTOM,
        output_type="latent",
        generator=gen(0),
        callback_on_step_end=record,
    ).images
    assert seen[0] == CUSTOM[10 - steps]  # the run starts at a step start
    assert len(seen) == 2 * steps - 1 == pipe.num_timesteps  # two evaluations a step, one for the last
    assert sorted(set(seen), reverse=True) == CUSTOM[10 - steps :]
    assert bool(torch.isfinite(out).all())


# -- item 3: callbacks see and steer the run -----------------------------------------------------------

KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sd": ("sd", "StableDiffusionPipeline", {}),
    "sd-img2img": ("sd", "StableDiffusionImg2ImgPipeline", {"image": "picture", "strength": 0.75}),
    "sd-inpaint": (
        "sd",
        "StableDiffusionInpaintPipeline",
        {"image": "picture", "mask_image": "mask", "strength": 0.75},
    ),
    "sdxl": ("sdxl", "StableDiffusionXLPipeline", {}),
    "sdxl-img2img": ("sdxl", "StableDiffusionXLImg2ImgPipeline", {"image": "picture", "strength": 0.75}),
    "sdxl-inpaint": (
        "sdxl",
        "StableDiffusionXLInpaintPipeline",
        {"image": "picture", "mask_image": "mask", "strength": 0.75},
    ),
}


def _inputs(extra: dict[str, Any]) -> dict[str, Any]:
    make = {"picture": picture, "mask": mask}
    return {k: make[v]() if isinstance(v, str) and v in make else v for k, v in extra.items()}


def _kind(kind: str, sd_pair: Any, sdxl_pair: Any, sched: str | None = None) -> tuple[Any, Any, str, dict[str, Any]]:
    family, name, extra = KINDS[kind]
    ref0, base0 = sd_pair if family == "sd" else sdxl_pair
    pipe = build(base0, name, scheduler(base0, sched) if sched else None)
    return ref0, pipe, name, {"prompt": PROMPT, **_inputs(extra)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_callback_reads_the_run_state(kind: str, sd_pair: Any, sdxl_pair: Any) -> None:
    _, pipe, _, kw = _kind(kind, sd_pair, sdxl_pair)
    seen: list[tuple[Any, ...]] = []

    def look(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        seen.append(
            (
                p.num_timesteps,
                p.guidance_scale,
                p.do_classifier_free_guidance,
                p.cross_attention_kwargs,
                p.interrupt,
                p.guidance_rescale,
            )
        )

    pipe(
        **kw,
        num_inference_steps=4,
        guidance_scale=6.5,
        cross_attention_kwargs={"scale": 1.0},
        output_type="latent",
        generator=gen(0),
        callback_on_step_end=look,
    )
    assert len(seen) == pipe.num_timesteps > 0
    assert all(s == (pipe.num_timesteps, 6.5, True, {"scale": 1.0}, False, 0.0) for s in seen)


def _dynamic_cfg(names: list[str]) -> Any:
    """The recipe users copy: at 40% of the run keep the conditional half and switch guidance off."""

    def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if i == int(pipe.num_timesteps * 0.4):
            for name in names:
                tensors[name] = tensors[name].chunk(2)[-1]
            pipe._guidance_scale = 0.0
        return tensors

    return callback


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_dynamic_cfg_recipe_matches_diffusers(kind: str, sd_pair: Any, sdxl_pair: Any) -> None:
    ref0, pipe, name, kw = _kind(kind, sd_pair, sdxl_pair)
    ref = reference(ref0, name)
    names = ["prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if kind == "sdxl" else [])
    run = {**kw, "num_inference_steps": 5, "output_type": "latent", "callback_on_step_end_tensor_inputs": names}
    ours = pipe(**run, generator=gen(2), callback_on_step_end=_dynamic_cfg(names)).images
    assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
    theirs = ref(**run, generator=gen(2), callback_on_step_end=_dynamic_cfg(names)).images
    plain = pipe(**{**run, "callback_on_step_end_tensor_inputs": ["latents"]}, generator=gen(2)).images
    assert diff(ours, theirs) <= LATENT_TOL
    assert diff(ours, plain) > 1e-3  # guidance really stopped


#: (kind, tensor a callback replaces at step 1); Diffusers applies these too, so it is the oracle
APPLIED = [
    ("sd", "latents"),
    ("sd", "prompt_embeds"),
    ("sd-inpaint", "mask"),
    ("sdxl", "prompt_embeds"),
    ("sdxl", "add_text_embeds"),
    ("sdxl", "add_time_ids"),
    ("sdxl-inpaint", "mask"),
]


def _halve_at_step_1(name: str, whole: str | None = None) -> Any:
    def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if i != 1:
            return {}
        if whole is None:
            return {name: tensors[name] * 0.5}
        full = tensors[whole]  # [negative, positive] as the UNet sees it
        half = full.shape[0] // 2
        return {whole: torch.cat([full[:half] * 0.5, full[half:]])}

    return callback


@pytest.mark.parametrize(("kind", "name"), APPLIED)
def test_a_replaced_tensor_takes_effect_from_the_next_step(kind: str, name: str, sd_pair: Any, sdxl_pair: Any) -> None:
    ref0, pipe, cls, kw = _kind(kind, sd_pair, sdxl_pair)
    ref = reference(ref0, cls)
    run = {**kw, "num_inference_steps": 4, "output_type": "latent", "callback_on_step_end_tensor_inputs": [name]}
    ours = pipe(**run, generator=gen(3), callback_on_step_end=_halve_at_step_1(name)).images
    theirs = ref(**run, generator=gen(3), callback_on_step_end=_halve_at_step_1(name)).images
    plain = pipe(**{**kw, "num_inference_steps": 4, "output_type": "latent"}, generator=gen(3)).images
    assert diff(ours, theirs) <= LATENT_TOL
    assert diff(ours, plain) > 1e-4


#: negative parts: Diffusers ignores them once stacked; difflux splices them into the stacked tensor
NEGATIVES = [
    ("sd", "negative_prompt_embeds", "prompt_embeds"),
    ("sdxl", "negative_prompt_embeds", "prompt_embeds"),
    ("sdxl", "negative_pooled_prompt_embeds", "add_text_embeds"),
    ("sdxl", "negative_add_time_ids", "add_time_ids"),
]


@pytest.mark.parametrize(("kind", "name", "whole"), NEGATIVES)
def test_a_replaced_negative_part_takes_effect(kind: str, name: str, whole: str, sd_pair: Any, sdxl_pair: Any) -> None:
    """Replacing the negative part equals replacing the negative half of the stacked tensor (Diffusers' run)."""
    ref0, pipe, cls, kw = _kind(kind, sd_pair, sdxl_pair)
    ref = reference(ref0, cls)
    run = {**kw, "num_inference_steps": 4, "output_type": "latent", "negative_prompt": "blurry"}
    ours = pipe(
        **run, generator=gen(4), callback_on_step_end=_halve_at_step_1(name), callback_on_step_end_tensor_inputs=[name]
    ).images
    theirs = ref(
        **run,
        generator=gen(4),
        callback_on_step_end=_halve_at_step_1(name, whole),
        callback_on_step_end_tensor_inputs=[whole],
    ).images
    plain = pipe(**run, generator=gen(4)).images
    assert diff(ours, theirs) <= LATENT_TOL
    assert diff(ours, plain) > 1e-4


def test_inpaint_masked_image_latents_from_a_callback_take_effect(sd: Any, tmp_path: Any) -> None:
    ref = sd.diffusers_pipeline(
        "StableDiffusionInpaintPipeline",
        sd.diffusers_sd_components(tmp_path, in_channels=9),
        requires_safety_checker=False,
    )
    ref.save_pretrained(tmp_path / "inpaint")
    pipe = sd.load_difflux(tmp_path / "inpaint")
    name = "masked_image_latents"
    run = {
        "prompt": PROMPT,
        "image": picture(),
        "mask_image": mask(),
        "num_inference_steps": 3,
        "output_type": "latent",
        "callback_on_step_end_tensor_inputs": [name],
    }
    ours = pipe(**run, generator=gen(5), callback_on_step_end=_halve_at_step_1(name)).images
    theirs = ref(**run, generator=gen(5), callback_on_step_end=_halve_at_step_1(name)).images
    plain = pipe(**{**run, "callback_on_step_end_tensor_inputs": ["latents"]}, generator=gen(5)).images
    assert diff(ours, theirs) <= LATENT_TOL
    assert diff(ours, plain) > 1e-4


def test_interrupt_stops_after_the_step(sd_pair: Any) -> None:
    _, base0 = sd_pair
    pipe = build(base0, "StableDiffusionPipeline")
    states: list[torch.Tensor] = []

    def stop(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        states.append(tensors["latents"].clone())
        if i == 1:
            p._interrupt = True

    out = pipe(PROMPT, num_inference_steps=5, output_type="latent", generator=gen(0), callback_on_step_end=stop)
    assert len(states) == 2 and pipe.num_timesteps == 5
    assert diff(out.images, states[-1]) == 0.0


@pytest.mark.parametrize("sched", ["DDIMScheduler", "HeunDiscreteScheduler"])
@pytest.mark.parametrize("every", [1, 2])
def test_legacy_callback_warns_and_sees_each_whole_step(sd_pair: Any, sched: str, every: int) -> None:
    _, base0 = sd_pair
    pipe = build(base0, "StableDiffusionPipeline", scheduler(base0, sched))
    legacy: list[tuple[int, float, torch.Tensor]] = []
    modern: dict[int, torch.Tensor] = {}

    def new(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        modern[i] = tensors["latents"].clone()

    with pytest.warns(FutureWarning, match="callback_on_step_end"):
        pipe(
            PROMPT,
            num_inference_steps=4,
            output_type="latent",
            generator=gen(0),
            callback_on_step_end=new,
            callback=lambda step, t, latents: legacy.append((step, float(t), latents.clone())),
            callback_steps=every,
        )
    order = pipe.scheduler.order
    assert [s for s, _, _ in legacy] == list(range(0, 4, every))
    for step, _, latents in legacy:  # the latents at the end of that whole step
        position = min(step * order + order - 1, pipe.num_timesteps - 1)
        assert diff(latents, modern[position]) == 0.0


def test_legacy_callback_steps_must_be_positive(sd_pair: Any) -> None:
    pipe = build(sd_pair[1], "StableDiffusionPipeline")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="callback_steps must be a positive int"):
        warnings.simplefilter("ignore")
        pipe(PROMPT, num_inference_steps=2, callback=lambda *a: None, callback_steps=0)


# -- item 4: one image per generator -------------------------------------------------------------------

GEN_KINDS = [
    "sd",
    "sd-img2img",
    "sd-inpaint",
    "sd-inpaint9",
    "sdxl",
    "sdxl-img2img",
    "sdxl-inpaint",
    "sdxl-inpaint9",
    "depth2img",
    "upscale",
]


def _make_generator_pipe(kind: str, sd_pair: Any, sdxl_pair: Any, unet_like: Any) -> tuple[Any, dict[str, Any]]:
    base0 = sd_pair[1] if not kind.startswith("sdxl") else sdxl_pair[1]
    sched = scheduler(base0, "EulerAncestralDiscreteScheduler")
    image = {"image": picture(), "strength": 0.75}
    if kind in KINDS:
        _, name, extra = KINDS[kind]
        return build(base0, name, sched), {"prompt": PROMPT, **_inputs(extra)}
    if kind in ("sd-inpaint9", "sdxl-inpaint9"):
        name = "StableDiffusionInpaintPipeline" if kind == "sd-inpaint9" else "StableDiffusionXLInpaintPipeline"
        pipe = build(base0, name, sched, unet=unet_like(base0.unet, in_channels=9))
        return pipe, {"prompt": PROMPT, "image": picture(), "mask_image": mask(), "strength": 0.75}
    if kind == "depth2img":
        pipe = build(base0, "StableDiffusionDepth2ImgPipeline", sched, unet=unet_like(base0.unet, in_channels=5))
        return pipe, {"prompt": PROMPT, **image, "depth_map": torch.rand(1, 16, 16, generator=gen(9))}
    assert kind == "upscale"
    unet = unet_like(base0.unet, in_channels=7, num_class_embeds=100)
    pipe = build(base0, "StableDiffusionUpscalePipeline", sched, unet=unet, vae=copy.deepcopy(base0.vae))
    return pipe, {"prompt": PROMPT, "image": picture(size=8)}


@pytest.mark.parametrize("kind", GEN_KINDS)
@pytest.mark.parametrize("layout", ["two prompts", "two images per prompt"])
def test_each_output_comes_from_its_own_generator(
    kind: str, layout: str, sd: Any, sd_pair: Any, sdxl_pair: Any
) -> None:
    """generator=[g5, g6]: the second output equals a solo run with g6 (initial noise, VAE samples, scheduler noise)."""
    pipe, kw = _make_generator_pipe(kind, sd_pair, sdxl_pair, sd.unet_like)
    kw = {**kw, "num_inference_steps": 3, "output_type": "latent"}
    if "eta" in inspect.signature(pipe.__call__).parameters:
        kw["eta"] = 1.0
    if layout == "two prompts":
        pair = pipe(**{**kw, "prompt": [PROMPT, PROMPT]}, generator=[gen(5), gen(6)]).images
    else:
        pair = pipe(**kw, num_images_per_prompt=2, generator=[gen(5), gen(6)]).images
    solo = pipe(**kw, generator=gen(6)).images
    first = pipe(**kw, generator=gen(5)).images
    assert diff(pair[1:], solo) <= LATENT_TOL
    assert diff(pair[:1], first) <= LATENT_TOL


# -- item 5 and issue 11 item 3: every input checked, before any model runs ---------------------------

NAMES = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionDepth2ImgPipeline",
    "StableDiffusionImageVariationPipeline",
    "StableDiffusionUpscalePipeline",
    "StableDiffusionLatentUpscalePipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
]


def _nan_image() -> torch.Tensor:
    image = torch.rand(1, 3, 32, 32)
    image[0, 0, 3, 3] = float("nan")
    return image


def _bad_embeds(width: int) -> torch.Tensor:
    return torch.randn(1, 77, width + 3)


#: (case, argument it sets, value or maker, what the message names)
CASES: list[tuple[str, str, Any, str]] = [
    ("height 0", "height", 0, "height=0 must be positive"),
    ("height negative", "height", -64, "height=-64 must be positive"),
    ("width not a multiple of 8", "width", 36, "width=36 is not a multiple of 8"),
    ("NaN latents", "latents", "nan-latents", "latents holds 1 NaN"),
    ("NaN mask", "mask_image", "nan-mask", "mask_image holds 1 NaN"),
    ("NaN image", "image", "nan-image", "image holds 1 NaN"),
    ("image under one latent pixel", "image", "tiny-image", "smaller than one latent pixel"),
    ("prompt_embeds of the wrong width", "prompt_embeds", "wide-embeds", "features per token, but the UNet"),
    ("prompt_embeds as a list", "prompt_embeds", "list-embeds", r"prompt_embeds must be a torch.Tensor.*got list"),
    ("prompt_embeds without a token axis", "prompt_embeds", "flat-embeds", r"shaped \(batch, tokens, features\)"),
    (
        "negative_prompt_embeds as an array",
        "negative_prompt_embeds",
        "array-embeds",
        r"negative_prompt_embeds must be a torch.Tensor.*got ndarray",
    ),
    ("output_type unknown", "output_type", "jpg", "output_type='jpg' is not supported"),
    ("unknown callback tensor", "callback_on_step_end_tensor_inputs", ["latents", "noise"], "'noise'"),
]


def _value(maker: Any, pipe: Any) -> Any:
    if maker == "nan-latents":
        latents = torch.randn(1, 4, 16, 16)
        latents[0, 0, 0, 0] = float("nan")
        return latents
    if maker == "nan-mask":
        m = torch.zeros(1, 1, 32, 32)
        m[0, 0, 1, 1] = float("nan")
        return m
    if maker == "nan-image":
        return _nan_image()
    if maker == "tiny-image":
        return picture(size=1)
    if maker == "wide-embeds":
        return _bad_embeds(int(pipe.unet.config.cross_attention_dim))
    if maker == "list-embeds":
        return torch.randn(1, 77, int(pipe.unet.config.cross_attention_dim)).tolist()
    if maker == "flat-embeds":
        return torch.randn(1, int(pipe.unet.config.cross_attention_dim))
    if maker == "array-embeds":
        return torch.randn(1, 77, int(pipe.unet.config.cross_attention_dim)).numpy()
    return maker


ANY_SIZE = (
    "StableDiffusionImageVariationPipeline",
    "StableDiffusionUpscalePipeline",
    "StableDiffusionLatentUpscalePipeline",
)


def _validator_params() -> list[Any]:
    params = []
    for name in NAMES:
        call = inspect.signature(getattr(difflux_stable_diffusion, name).__call__).parameters
        for case, argument, maker, message in CASES:
            if argument not in call:
                continue
            if argument == "image" and name in ("StableDiffusionImageVariationPipeline",) and maker == "tiny-image":
                continue
            if maker == "tiny-image" and name in (
                "StableDiffusionUpscalePipeline",
                "StableDiffusionLatentUpscalePipeline",
            ):
                continue  # these take images of any size (one pixel is one latent pixel)
            params.append(pytest.param(name, argument, maker, message, id=f"{name}-{case}"))
    return params


def _base_call(name: str) -> dict[str, Any]:
    call = inspect.signature(getattr(difflux_stable_diffusion, name).__call__).parameters
    kw: dict[str, Any] = {"num_inference_steps": 2}
    if "prompt" in call:
        kw["prompt"] = PROMPT
    if "image" in call:
        kw["image"] = picture(size=8) if "Upscale" in name else picture()
    if "mask_image" in call:
        kw["mask_image"] = mask()
    if "depth_map" in call:
        kw["depth_map"] = torch.rand(1, 16, 16)
    if "callback_on_step_end" in call:
        kw["callback_on_step_end"] = lambda *a: None
    return kw


class _Spy:
    """Counts forward calls of every model component while in the ``with`` block."""

    def __init__(self, pipe: Any) -> None:
        self.calls = 0
        self.modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
        self.handles: list[Any] = []

    def __enter__(self) -> _Spy:
        self.handles = [m.register_forward_pre_hook(self._count) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _count(self, *args: Any) -> None:
        self.calls += 1


@pytest.mark.parametrize(("name", "argument", "maker", "message"), _validator_params())
def test_bad_inputs_are_refused_before_any_model_runs(
    name: str, argument: str, maker: Any, message: str, sd_pair: Any, sdxl_pair: Any
) -> None:
    base0 = sdxl_pair[1] if "XL" in name else sd_pair[1]
    pipe = build(base0, name, vae=copy.deepcopy(base0.vae))  # the x4 upscaler rewrites its VAE's config
    kw = _base_call(name)
    if argument == "prompt_embeds":
        kw.pop("prompt")
    kw[argument] = _value(maker, pipe)
    with _Spy(pipe) as spy, pytest.raises((ValueError, TypeError), match=message):
        pipe(**kw)
    assert spy.calls == 0


def test_sdxl_embeds_of_different_lengths_get_a_clear_message(sdxl_pair: Any) -> None:
    """The public report: prompt_embeds (1, 154, D) with negative_prompt_embeds (1, 77, D)."""
    pipe = build(sdxl_pair[1], "StableDiffusionXLPipeline")
    width = int(pipe.unet.config.cross_attention_dim)
    with (
        _Spy(pipe) as spy,
        pytest.raises(
            ValueError,
            match=r"prompt_embeds have shape \(1, 154, 64\) but negative_prompt_embeds "
            r"\(1, 77, 64\).*same number of tokens \(154\)",
        ),
    ):
        pipe(
            prompt_embeds=torch.randn(1, 154, width),
            negative_prompt_embeds=torch.randn(1, 77, width),
            pooled_prompt_embeds=torch.randn(1, 32),
            negative_pooled_prompt_embeds=torch.randn(1, 32),
            num_inference_steps=2,
        )
    assert spy.calls == 0


def test_sd_embeds_of_different_lengths_get_the_same_message(sd_pair: Any) -> None:
    pipe = build(sd_pair[1], "StableDiffusionPipeline")
    with pytest.raises(ValueError, match=r"\(1, 154, 32\) but negative_prompt_embeds \(1, 77, 32\)"):
        pipe(prompt_embeds=torch.randn(1, 154, 32), negative_prompt_embeds=torch.randn(1, 77, 32))


def test_img2img_no_denoising_steps_message_is_whole(sd_pair: Any) -> None:
    pipe = build(sd_pair[1], "StableDiffusionImg2ImgPipeline")
    with pytest.raises(
        ValueError,
        match=r"strength=0.1 leaves no denoising steps out of 5 .*raise strength to at "
        r"least 0.2 or raise num_inference_steps",
    ):
        pipe(PROMPT, image=picture(), strength=0.1, num_inference_steps=5)


# -- item 7: num_timesteps after a run, dtype alias ----------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [("sd", 4), ("sd-img2img", 3), ("sdxl", 4), ("sdxl-inpaint", 3)])
def test_num_timesteps_after_a_run(kind: str, expected: int, sd_pair: Any, sdxl_pair: Any) -> None:
    _, pipe, _, kw = _kind(kind, sd_pair, sdxl_pair)
    pipe(**kw, num_inference_steps=4, output_type="latent", generator=gen(0))
    assert pipe.num_timesteps == expected


def test_dtype_is_an_alias_of_torch_dtype(sd: Any, sd_pair: Any, tmp_path: Any) -> None:
    import difflux

    sd_pair[1].save_pretrained(tmp_path / "sd")
    pipe = difflux.DiffusionPipeline.from_pretrained(tmp_path / "sd", dtype=torch.float64)
    assert pipe.unet.dtype == torch.float64 and pipe.vae.dtype == torch.float64
    with pytest.raises(TypeError, match="same option"):
        difflux.DiffusionPipeline.from_pretrained(tmp_path / "sd", dtype=torch.float64, torch_dtype=torch.float32)
