"""Measure generated handwritten digits: a classifier fitted on scikit-learn's digits labels them.

The embedded models (``difflux:digits``, ``difflux:digits-text2img``) are trained on scikit-learn's
8x8 digits (17 grey levels, upscaled to 16x16); their quality tests and ``bench/quality.py`` ask an
RBF support-vector classifier fitted on the same 1797 digits (``SVC(gamma=0.001)``, about 99%
cross-validated accuracy on real digits) which digit each generated image shows. Needs
``scikit-learn`` (a test requirement, not a dependency of difflux).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "NUMBER_WORDS",
    "digit_accuracy",
    "digit_classifier",
    "digit_features",
    "predict_digits",
    "sample_digits",
    "sampler_aliases",
    "with_sampler",
]

#: The digits as words, ``NUMBER_WORDS[7] == "seven"``.
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.cache
def digit_classifier() -> Any:
    """An ``sklearn.svm.SVC`` fitted on all of scikit-learn's digits (features as :func:`digit_features`)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    data = load_digits()
    return SVC(gamma=0.001).fit(data.data, data.target)


def digit_features(images: Any) -> np.ndarray:
    """Images as scikit-learn digit features: ``(N, 64)`` float, 8x8 area averages of the grey level, 0..16.

    Args:
        images: a float tensor or array ``(N, C, H, W)`` in ``[0, 1]`` (channels averaged to grey), or a
            sequence of PIL images (converted to ``L``, 0..255). ``H`` and ``W`` are multiples of 8.

    Raises:
        ValueError: the images are not ``(N, C, H, W)`` or their sides are not multiples of 8.
    """
    if isinstance(images, Sequence) and images and hasattr(images[0], "convert"):
        array = np.stack([np.asarray(image.convert("L"), dtype=np.float64) / 255.0 for image in images])[:, None]
    else:
        array = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, dtype=np.float64)
    if array.ndim != 4 or array.shape[2] % 8 or array.shape[3] % 8:
        raise ValueError(f"digit_features takes (N, C, H, W) images with sides a multiple of 8, not {array.shape}")
    n, _, h, w = array.shape
    grey = array.mean(axis=1)
    pooled = grey.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    features: np.ndarray = pooled.reshape(n, 64) * 16
    return features


def predict_digits(images: Any) -> np.ndarray:
    """The digit (0..9) the classifier sees in each image; ``images`` as :func:`digit_features` takes them."""
    return np.asarray(digit_classifier().predict(digit_features(images)))


def digit_accuracy(images: Any, wanted: Sequence[int] | np.ndarray) -> float:
    """Share of ``images`` the classifier labels as the digit in ``wanted`` (same order), 0..1."""
    wanted = np.asarray(wanted)
    predicted = predict_digits(images)
    if predicted.shape != wanted.shape:
        raise ValueError(f"{len(predicted)} images but {len(wanted)} wanted labels")
    return float(np.mean(predicted == wanted))


def sampler_aliases(pipe: Any) -> dict[str, str]:
    """Every registered sampler alias whose scheduler can replace ``pipe``'s -> the first alias with the
    same class and overrides (aliases that name the same sampler, like ``"Euler a"`` and
    ``"euler_ancestral"``, map to one of them, so a sweep runs each sampler once)."""
    from difflux.registry import get_registry

    registry = get_registry()
    current = type(pipe.scheduler).__name__
    compatible = {current, *getattr(pipe.scheduler, "_compatibles", ())}
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for alias, spec in registry.scheduler_aliases.items():
        if spec.scheduler not in compatible:
            continue
        key = f"{spec.scheduler}:{sorted(spec.overrides.items())}"
        out[alias] = first.setdefault(key, alias)
    return out


def with_sampler(pipe: Any, alias: str, config: Any = None) -> Any:
    """``pipe`` with its scheduler replaced by the sampler ``alias`` (a web-UI name), built from ``config``.

    Pass the model's own scheduler config when sweeping: built from the previous sampler's config
    instead, a new one would inherit its options (``use_karras_sigmas``, ``algorithm_type`` ...).
    """
    from difflux.registry import get_registry

    cls, overrides = get_registry().resolve_scheduler(alias)
    pipe.register_modules(scheduler=cls.from_config(config or pipe.scheduler.config, **overrides))
    return pipe


def sample_digits(pipe: Any, seed: int, num_inference_steps: int, per_digit: int = 1, **call: Any) -> tuple[Any, Any]:
    """Draw ``per_digit`` images of each digit 0..9 with ``pipe``; returns ``(images, wanted)``.

    A class-conditional pipeline (``class_labels``) gets the labels; a text-to-image pipeline the
    prompts ``"a handwritten zero"`` ... ``"a handwritten nine"``. ``images`` is a float tensor
    ``(10 * per_digit, C, H, W)`` in ``[0, 1]``; ``wanted`` the digits, ``(10 * per_digit,)`` int64.
    ``call`` is passed on to the pipeline (``guidance_scale`` ...).
    """
    import torch

    wanted = torch.arange(10 * per_digit) % 10
    generator = torch.Generator().manual_seed(seed)
    if "class_labels" in inspect.signature(type(pipe).__call__).parameters:
        call.update(batch_size=len(wanted), class_labels=wanted)
    else:
        call.update(prompt=[f"a handwritten {NUMBER_WORDS[i]}" for i in wanted.tolist()])
    out = pipe(num_inference_steps=num_inference_steps, generator=generator, output_type="pt", **call)
    return out.images, wanted
