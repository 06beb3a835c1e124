"""The embedded text-to-image model: a tiny latent Stable Diffusion for 16x16 handwritten digits.

``AutoencoderKL`` + ``UNet2DConditionModel`` + a small ``CLIPTextModel`` / ``CLIPTokenizer`` + a
``DDIMScheduler``, in the Diffusers layout of a ``StableDiffusionPipeline`` (about 4 MB), trained on
scikit-learn's digits with captions ("a handwritten seven", "the digit 7, thick strokes", "a slanted 4",
"nine", "3", ...) by ``examples/train_digits_text2img.py``. ``difflux generate --prompt ...`` with no
model argument loads it from here; so does ``DiffusionPipeline.from_pretrained("difflux:digits-text2img")``.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

__all__ = ["TEXT2IMG_MODEL", "TEXT2IMG_MODEL_NAME", "default_model_path"]

#: The folder name of the embedded model inside this package.
TEXT2IMG_MODEL_NAME = "digits-text2img"
#: The name ``from_pretrained`` and ``difflux generate`` / ``difflux info`` know it by.
TEXT2IMG_MODEL = f"difflux:{TEXT2IMG_MODEL_NAME}"


def default_model_path() -> Path:
    """The folder of the embedded pipeline (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` ...).

    Raises:
        FileNotFoundError: the folder is missing from the installed package (names the fix).
    """
    resource = files(__name__).joinpath(TEXT2IMG_MODEL_NAME)
    with as_file(resource) as path:  # an installed wheel is a real folder; zip imports are extracted
        folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded text-to-image model is missing from {folder}; reinstall difflux-stable-diffusion, "
            "or train it with examples/train_digits_text2img.py"
        )
    return folder
