"""Train the embedded text-to-image model: a tiny latent Stable Diffusion on scikit-learn's digits.

The architecture is the real Stable Diffusion stack at toy size, saved in the Diffusers layout as a
``StableDiffusionPipeline`` folder that difflux and Diffusers both load:

* ``vae``: ``AutoencoderKL`` (16 / 32 channels, 4 latent channels) from 16x16 RGB digits to 8x8 latents;
* ``text_encoder``: a 2-layer, 32-wide ``transformers.CLIPTextModel``;
* ``tokenizer``: a ``CLIPTokenizer`` whose ``vocab.json`` / ``merges.txt`` are written here, offline
  (every byte plus one merged token per caption word);
* ``unet``: ``UNet2DConditionModel`` (32 / 64 channels, cross-attention on the text at 4x4 and in the middle);
* ``scheduler``: ``DDIMScheduler`` with Stable Diffusion's ``scaled_linear`` betas.

The 1797 digits (8x8, 17 grey levels) are upscaled to 16x16 (bilinear). Each training example gets a
caption drawn from templates ("a handwritten seven", "the digit 7, thick strokes", "a slanted 4",
"nine", "3", ...); "thick"/"thin" and "slanted" are measured on the image (ink mass and the shear of its
second moments). The VAE is fitted first (reconstruction + a small KL term, Kingma & Welling 2014;
Rombach et al. 2022), then the UNet and text encoder together on the noise-prediction loss (Ho et al.
2020) with 10% of captions dropped to the empty prompt, so classifier-free guidance (Ho & Salimans
2022) works. Training is not part of the library; this script documents how the shipped weights
were made::

    python examples/train_digits_text2img.py                  # writes the plugin's default_model/digits-text2img
    python examples/train_digits_text2img.py --vae-steps 5 --unet-steps 5 --output /tmp/t2i   # a quick try
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from difflux_models import AutoencoderKL, UNet2DConditionModel
from difflux_schedulers.ddim import DDIMScheduler
from difflux_stable_diffusion import StableDiffusionPipeline
from difflux_transformers.testing import write_tiny_clip_vocab
from sklearn.datasets import load_digits
from sklearn.svm import SVC
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "plugins/stable-diffusion/src/difflux_stable_diffusion/default_model/digits-text2img"
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Caption templates; ``{n}`` is the digit as a word or a numeral, ``{style}`` a measured stroke style.
TEMPLATES: tuple[str, ...] = (
    "{n}",
    "a {n}",
    "a handwritten {n}",
    "the digit {n}",
    "the number {n}",
    "a {style} {n}",
    "a handwritten {n}, {strokes} strokes",
    "the digit {n}, {strokes} strokes",
    "a picture of the digit {n}",
)

#: Every word a caption can hold (each gets one merged BPE token).
WORDS: tuple[str, ...] = (
    *NUMBER_WORDS,
    *"0123456789",
    "a",
    "an",
    "the",
    "digit",
    "number",
    "handwritten",
    "picture",
    "of",
    "drawn",
    "written",
    "thick",
    "thin",
    "bold",
    "slanted",
    "upright",
    "strokes",
    "stroke",
    "small",
    "large",
    "neat",
    "messy",
    "image",
    "photo",
    "numeral",
    "white",
    "black",
    "on",
    "blurry",
    "noisy",
    "noise",
    "and",
    "with",
)

SIZE = 16  # pixels
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": SIZE,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": SIZE // 2,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
MAX_TOKENS = 16
#: Stable Diffusion 1.x's training schedule.
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


# -- tokenizer -------------------------------------------------------------------------------------


def make_tokenizer(folder: Path) -> CLIPTokenizer:
    write_tiny_clip_vocab(folder, WORDS)  # every byte, one merged token per caption word
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=MAX_TOKENS, local_files_only=True
    )
    return tokenizer


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


# -- data ------------------------------------------------------------------------------------------


def digits(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as ``(N, 3, size, size)`` grey RGB images in ``[-1, 1]`` (bilinear upscaling) and labels."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return (images * 2 - 1).expand(-1, 3, -1, -1).contiguous(), torch.tensor(data.target)


def styles(images: torch.Tensor) -> tuple[list[str], list[str]]:
    """Per image: stroke weight ("thick" / "thin" / "") from ink mass terciles, and slant ("slanted" /
    "upright" / "") from the shear ``mu11 / mu02`` of the ink's second moments (strongest / weakest thirds)."""
    ink = (images[:, 0] + 1) / 2  # (N, H, W) in [0, 1]
    mass = ink.sum(dim=(1, 2))
    h, w = ink.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    cy = (ink * ys).sum(dim=(1, 2)) / mass
    cx = (ink * xs).sum(dim=(1, 2)) / mass
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    shear = ((ink * dx * dy).sum(dim=(1, 2)) / (ink * dy * dy).sum(dim=(1, 2))).abs()
    lo_m, hi_m = mass.quantile(1 / 3), mass.quantile(2 / 3)
    lo_s, hi_s = shear.quantile(1 / 3), shear.quantile(2 / 3)
    weight = ["thick" if m > hi_m else "thin" if m < lo_m else "" for m in mass.tolist()]
    slant = ["slanted" if s > hi_s else "upright" if s < lo_s else "" for s in shear.tolist()]
    return weight, slant


def caption(label: int, weight: str, slant: str, rng: random.Random) -> str:
    """One caption for a digit, drawn from :data:`TEMPLATES`, naming the digit as a word or a numeral."""
    n = NUMBER_WORDS[label] if rng.random() < 0.5 else str(label)
    options = [t for t in TEMPLATES if ("{strokes}" not in t or weight) and ("{style}" not in t or weight or slant)]
    template = rng.choice(options)
    style = rng.choice([s for s in (weight, slant) if s] or [""])
    return template.format(n=n, style=style, strokes=weight)


# -- training --------------------------------------------------------------------------------------


def train_vae(images: torch.Tensor, steps: int, batch_size: int, lr: float) -> AutoencoderKL:
    """Reconstruction (L1 + MSE) plus ``1e-6`` KL, as in latent diffusion's autoencoder without the GAN."""
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    start = time.time()
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch_size,))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            took = time.time() - start
            print(f"vae  step {step:5d}  loss {loss.item():.4f}  kl {kl.item():.1f}  {took:5.0f} s", flush=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image, ``(N, 4, 8, 8)`` each."""
    dist = vae.encode(images).latent_dist
    return dist.mean, dist.std


def train_unet(
    latents: tuple[torch.Tensor, torch.Tensor],
    captions: list[list[str]],
    tokenizer: CLIPTokenizer,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    scaling_factor: float,
    checkpoint: Callable[[UNet2DConditionModel, CLIPTextModel], None] | None = None,
    every: int = 0,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Noise prediction on scaled latents, the text encoder trained with the UNet; EMA of both.

    ``checkpoint(ema_unet, ema_text_encoder)`` is called every ``every`` steps (when both are given).
    """
    mean, std = latents
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = make_text_encoder(tokenizer)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    alphas_cumprod = DDIMScheduler(**SCHEDULE).alphas_cumprod
    rng = random.Random(seed)
    # every distinct caption tokenized once
    all_captions = sorted({c for cs in captions for c in cs} | {""})
    index = {c: i for i, c in enumerate(all_captions)}
    ids = tokenizer(all_captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    ids = ids.input_ids
    start = time.time()
    for step in range(steps):
        pick = torch.randint(0, len(mean), (batch_size,))
        x0 = mean[pick] + std[pick] * torch.randn_like(mean[pick])
        x0 = x0 * scaling_factor
        texts = [rng.choice(captions[i]) if rng.random() >= 0.1 else "" for i in pick.tolist()]
        tokens = ids[[index[t] for t in texts]]
        t = torch.randint(0, len(alphas_cumprod), (batch_size,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        hidden = text_encoder(tokens).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=hidden).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
                    averaged.lerp_(current, 1 - decay)
        if checkpoint is not None and every and step and step % every == 0:
            checkpoint(ema_unet, ema_text.eval())
            ema_text.train()
        if step % 200 == 0 or step == steps - 1:
            print(f"unet step {step:5d}  loss {loss.item():.4f}  {time.time() - start:5.0f} s", flush=True)
    return ema_unet, ema_text.eval()


def evaluate(pipe: StableDiffusionPipeline, steps: int = 20, seed: int = 0) -> float:
    """Share of 50 images (5 per digit, "a handwritten seven" ...) an SVM fitted on the digits labels as asked."""
    data = load_digits()
    classifier = SVC(gamma=0.001).fit(data.data, data.target)
    prompts = [f"a handwritten {NUMBER_WORDS[i % 10]}" for i in range(50)]
    out = pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="pt")
    grey = out.images.mean(dim=1, keepdim=True)
    features = F.adaptive_avg_pool2d(grey, 8).reshape(len(prompts), -1).numpy() * 16
    wanted = np.arange(50) % 10
    return float((classifier.predict(features) == wanted).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="pipeline folder to write")
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--unet-steps", type=int, default=1300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=3e-3)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the UNet (one-cycle schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N UNet steps")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    images, labels = digits()
    weight, slant = styles(images)
    captions = [
        list({caption(int(label), w, s, rng) for _ in range(12)})
        for label, w, s in zip(labels.tolist(), weight, slant, strict=True)
    ]
    vae = train_vae(images, args.vae_steps, args.batch_size, args.vae_lr)
    mean, std = encode_all(vae, images)
    scaling_factor = float(1 / mean.std())  # unit-variance latents, saved as the VAE's scaling_factor
    vae.register_to_config(scaling_factor=scaling_factor)
    print(f"latent scaling factor {scaling_factor:.4f}", flush=True)

    work = args.output.with_name(args.output.name + ".tokenizer")
    tokenizer = make_tokenizer(work)

    def save(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(**SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(args.output)
        return pipe

    unet, text_encoder = train_unet(
        (mean, std),
        captions,
        tokenizer,
        args.unet_steps,
        args.batch_size,
        args.lr,
        args.seed,
        scaling_factor,
        checkpoint=save,
        every=args.save_every,
    )
    pipe = save(unet, text_encoder)
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    print(f"saved {args.output}")
    if args.evaluate:
        pipe.set_progress_bar_config(disable=True)
        print(f"classifier accuracy on 50 samples (20 DDIM steps): {evaluate(pipe):.2f}")


if __name__ == "__main__":
    main()
