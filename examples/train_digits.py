"""Train the embedded default model: a class-conditional DDPM on scikit-learn's handwritten digits.

The 1797 digits (8x8, 17 grey levels) are upscaled to 16x16 and fitted by a small
``UNet2DModel`` with one embedding per digit; the exponential moving average of its weights is
saved with a DDIM scheduler as a Diffusers-format ``DDIMPipeline`` folder, which both difflux and
Diffusers load. Training is not part of the library; this script documents how the shipped
weights were made::

    python examples/train_digits.py                 # writes the plugin's default_model/digits
    python examples/train_digits.py --steps 200 --output /tmp/digits   # a quick try

With ``--evaluate`` (on by default) it samples 100 digits, ten of each class, and reports how
often a classifier fitted on the same dataset recognises the requested digit.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from difflux_models.unet_2d import UNet2DModel
from difflux_pipelines_unconditional import DDIMPipeline
from difflux_schedulers.ddim import DDIMScheduler
from difflux_schedulers.ddpm import DDPMScheduler
from sklearn.datasets import load_digits
from sklearn.svm import SVC

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "plugins/pipelines-unconditional/src/difflux_pipelines_unconditional/default_model/digits"
)

#: 16x16 pixels, one grey channel; 16 / 32 / 32 channels at 16, 8 and 4 pixels (about 270k weights).
UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "num_class_embeds": 10,
}

#: The training noise schedule, shared by the saved DDIM scheduler: Stable Diffusion's ``scaled_linear``
#: betas, as the text-to-image model uses. The cosine schedule (Nichol & Dhariwal 2021) that the first
#: weights were trained on ends at sigma ~2e4, where Karras-sigma samplers then spend their first steps;
#: ``scaled_linear`` ends at sigma ~14.6, so every registered sampler stays on noise levels the model saw.
#: ``trailing`` timestep spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
#: Flawed", section 3.3) starts sampling at the last training timestep, the noise level the initial noise
#: is drawn at; ``leading`` started 20-step runs at t=950 and cost the deterministic samplers a digit or two.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": True,
    "timestep_spacing": "trailing",
}


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as ``(N, 1, size, size)`` images in ``[-1, 1]`` (bilinear upscaling) and their labels."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images * 2 - 1, torch.tensor(data.target)


def to_8x8(images: torch.Tensor) -> np.ndarray:
    """``(N, 1, 16, 16)`` pixels in ``[0, 1]`` as sklearn digit features (8x8, values 0..16)."""
    return F.adaptive_avg_pool2d(images.float(), 8).reshape(len(images), -1).numpy() * 16


def train(steps: int, batch_size: int, lr: float, seed: int) -> UNet2DModel:
    """Fit the UNet to predict the noise added at a random timestep (Ho et al. 2020, Algorithm 1)."""
    torch.manual_seed(seed)
    images, labels = digits()
    unet = UNet2DModel(**UNET_CONFIG)  # type: ignore[arg-type]
    ema = copy.deepcopy(unet).requires_grad_(False)
    alphas_cumprod = DDPMScheduler(**SCHEDULE).alphas_cumprod  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(steps):
        pick = torch.randint(0, len(images), (batch_size,))
        x0, y = images[pick], labels[pick]
        t = torch.randint(0, len(alphas_cumprod), (batch_size,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(noisy, t, class_labels=y).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        decay = min(0.995, (1 + step) / (10 + step))  # EMA warm-up, then a ~200-step horizon
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), unet.parameters(), strict=True):
                averaged.lerp_(current, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f} s", flush=True)
    return ema


def evaluate(pipe: DDIMPipeline, num_inference_steps: int = 10, seed: int = 0) -> float:
    """Share of 100 generated digits (ten per class) that an SVM fitted on the dataset labels as asked."""
    data = load_digits()
    classifier = SVC(gamma=0.001).fit(data.data, data.target)
    wanted = torch.arange(100) % 10
    out = pipe(
        batch_size=100,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=num_inference_steps,
        class_labels=wanted,
        output_type="pt",
    )
    predicted = classifier.predict(to_8x8(out.images))  # type: ignore[union-attr]
    return float((predicted == wanted.numpy()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="pipeline folder to write")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    unet = train(args.steps, args.batch_size, args.lr, args.seed)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**SCHEDULE))  # type: ignore[arg-type]
    pipe.save_pretrained(args.output)
    print(f"saved {args.output}")
    if args.evaluate:
        pipe.set_progress_bar_config(disable=True)
        print(f"classifier accuracy on 100 samples (10 DDIM steps): {evaluate(pipe):.2f}")


if __name__ == "__main__":
    main()
