"""The embedded models draw the digit asked for with every sampler: a classifier fitted on scikit-learn's
digits reads at least 95% of them as asked, for each registered sampler alias at the CLI's default step
count and three seeds (``bench/quality.py`` draws the same sweep as a picture and a table).

The full sweep is ``slow`` (a few minutes on two cores); the default sampler of each model is checked
in every run by the models' own tests (``test_default_model.py``, ``test_default_text2img.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("difflux_stable_diffusion")
pytest.importorskip("difflux_pipelines_unconditional")

from difflux import DiffusionPipeline
from difflux.cli import EMBEDDED_MODELS, TEXT2IMG_MODEL
from difflux.testing.digits import digit_accuracy, sample_digits, sampler_aliases, with_sampler

SEEDS = (0, 1, 2)


def _sweep(model: str, only: list[str] | None = None) -> dict[str, float]:
    pipe: Any = DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    steps = EMBEDDED_MODELS[model][1]
    accuracy = {}
    for alias in only or sorted(set(sampler_aliases(pipe).values())):
        with_sampler(pipe, alias, config)
        scores = [digit_accuracy(*sample_digits(pipe, seed, steps)) for seed in SEEDS]
        accuracy[alias] = sum(scores) / len(scores)
    return accuracy


def test_sampler_aliases_cover_the_registry() -> None:
    """The sweep runs each sampler once: aliases naming the same class and options share a run."""
    pipe: Any = DiffusionPipeline.from_pretrained(TEXT2IMG_MODEL)
    aliases = sampler_aliases(pipe)
    assert aliases["euler_ancestral"] == aliases["Euler a"] == "Euler a"
    assert aliases["DPM++ 2M Karras"] != aliases["DPM++ 2M"]
    assert {"DDIM", "Euler", "DPM++ 2M", "UniPC", "DEIS", "Heun", "LMS", "PNDM"} <= set(aliases)


def test_text_to_image_with_three_samplers() -> None:
    """A cheap slice of the sweep, run every time: DDIM (the default), Euler a and DPM++ 2M Karras."""
    low = {a: s for a, s in _sweep(TEXT2IMG_MODEL, ["DDIM", "Euler a", "DPM++ 2M Karras"]).items() if s < 0.95}
    assert not low, f"samplers below 95%: {low}"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["difflux:digits", TEXT2IMG_MODEL])
def test_every_sampler_draws_the_digit_asked_for(model: str) -> None:
    accuracy = _sweep(model)
    low = {alias: f"{score:.0%}" for alias, score in accuracy.items() if score < 0.95}
    assert not low, f"{model}: samplers below 95% over seeds {SEEDS}: {low}"
