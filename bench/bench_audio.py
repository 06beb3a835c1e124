"""Audio pipelines, difflux against Diffusers in the same run (CPU, fp32).

``--case tiny``: tiny random AudioLDM, AudioLDM 2 (GPT2LMHeadModel) and Audio Diffusion (DDIM)
pipelines end to end, built and saved by Diffusers, loaded by both libraries from the same folder,
same seed and prompt; medians of ``--repeat`` calls after a warm-up, calls alternating (goal:
difflux / diffusers <= 0.9). MusicLDM is left out: Diffusers 0.42.1 cannot run it on transformers 5.
AudioLDM 2 TTS is the text-to-speech layout (a tiny ``VitsModel`` / ``VitsTokenizer`` as second
encoder, ``transcription=``, GPT2LMHeadModel, which Diffusers runs on transformers 5); ``--case tts``
runs that one alone.

``--case unet``: AudioLDM's UNet at its published size (``cvssp/audioldm-s-full-v2``: 128/256/384/640
channels, 8 latent channels, CLAP-projection class embedding concatenated), one denoising step on
a guided batch of 2 for a 5.12 s clip (128 x 16 latents), same weights in both (goal <= 1.0).

``--case cli``: ``difflux generate`` of a 0.25 s clip from a tiny AudioLDM folder, command to .wav
file (a fresh process: imports, loading, 10 steps, vocoder, writing).

``--case midi``: ``MidiProcessor`` on the same 60 s MIDI file (4 instruments, drums, sustain
pedal; 2,520 notes, 13 segments), difflux against Diffusers, from the file's bytes to
tokens (note-seq parses the file in both); the tokens must be equal.

Run: ``python bench/bench_audio.py`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins" / "audio" / "tests"))


def alternate(calls: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median seconds of each call; one warm-up each, then the calls alternate (load hits all alike)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _audioldm(folder: Path) -> None:
    import diffusers
    from difflux_audio.testing import tiny_clap_text_config, tiny_hifigan, tiny_roberta_tokenizer
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(32, 64),
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=8, class_embeddings_concat=True,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[16, 32], in_channels=1, out_channels=1, norm_num_groups=8, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    pipe = diffusers.AudioLDMPipeline(
        vae=vae,
        text_encoder=ClapTextModelWithProjection(ClapTextConfig(**tiny_clap_text_config())).eval(),
        tokenizer=tiny_roberta_tokenizer(folder / "tokenizer"),
        unet=unet,
        scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_end=0.012, clip_sample=False),
        vocoder=tiny_hifigan(),
    )
    pipe.save_pretrained(folder / "pipe")


def _audio_diffusion(folder: Path) -> None:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=(32, 64), in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 32),
        norm_num_groups=8, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    )
    pipe = diffusers.AudioDiffusionPipeline(
        vqvae=None, unet=unet, mel=diffusers.Mel(x_res=64, y_res=32, n_iter=4), scheduler=diffusers.DDIMScheduler()
    )
    pipe.save_pretrained(folder / "pipe")


def bench_tiny(steps: int, repeat: int, only: str | None = None) -> None:
    import audio_builders
    import difflux
    import diffusers

    seconds = 0.064  # 256 frames of the tiny vocoder (4 samples each), 128 x 4 latents
    cases: list[tuple[str, Callable[[Path], None], Any, dict[str, Any]]] = [
        ("AudioLDM", _audioldm, diffusers.AudioLDMPipeline,
         {"prompt": "rain on a tin roof", "num_inference_steps": steps, "audio_length_in_s": seconds}),
        ("AudioLDM 2", lambda f: audio_builders.audioldm2(f).save_pretrained(f / "pipe"), diffusers.AudioLDM2Pipeline,
         {"prompt": "rain on a tin roof", "num_inference_steps": steps, "audio_length_in_s": seconds}),
        ("AudioLDM 2 TTS", lambda f: audio_builders.audioldm2_tts(f).save_pretrained(f / "pipe"),
         diffusers.AudioLDM2Pipeline,
         {"prompt": "a man speaking", "transcription": "hello world", "num_inference_steps": steps,
          "audio_length_in_s": seconds}),
        ("Audio Diffusion", _audio_diffusion, diffusers.AudioDiffusionPipeline, {"steps": steps}),
    ]
    cases = [case for case in cases if only is None or case[0] == only]
    print(f"tiny pipelines end to end, {steps} steps, CPU fp32 (median of {repeat}, alternating calls)")
    for name, build, theirs_cls, kwargs in cases:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            theirs = theirs_cls.from_pretrained(Path(tmp) / "pipe")
            ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / "pipe")
            for p in (theirs, ours):
                p.set_progress_bar_config(disable=True)
            rng = np.random.default_rng

            def seeded(seed: Any = None, rng: Any = rng) -> Any:  # Griffin-Lim's random phase, the same for both
                return rng(0 if seed is None else seed)

            def call(pipe: Any, kwargs: dict[str, Any] = kwargs) -> Any:
                return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

            np.random.default_rng = seeded
            try:
                a, b = call(ours).audios, call(theirs).audios
                medians = alternate({"difflux": partial(call, ours), "diffusers": partial(call, theirs)}, repeat)
            finally:
                np.random.default_rng = rng
            rel = float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-30))
            ratio = medians["difflux"] / medians["diffusers"]
            print(
                f"  {name:<16} diffusers {medians['diffusers'] * 1000:8.1f} ms   "
                f"difflux {medians['difflux'] * 1000:8.1f} ms"
                f"   ratio {ratio:.2f} (goal <= 0.9)   max rel |audio diff| {rel:.1e}"
            )


#: AudioLDM's UNet as published (cvssp/audioldm-s-full-v2)
AUDIOLDM_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 8,
    "out_channels": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (128, 256, 384, 640),
    "layers_per_block": 2,
    "cross_attention_dim": (128, 256, 384, 640),
    "attention_head_dim": 8,
    "class_embed_type": "simple_projection",
    "projection_class_embeddings_input_dim": 512,
    "class_embeddings_concat": True,
}


def bench_unet(repeat: int) -> None:
    import diffusers
    from difflux_models import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**AUDIOLDM_UNET).eval()
    with torch.device("meta"):
        ours = UNet2DConditionModel(**AUDIOLDM_UNET)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 128, 16, generator=g)
    clap = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    t = torch.tensor(500)

    def run(model: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x, t, encoder_hidden_states=None, class_labels=clap, return_dict=False)[0]
        return out

    diff = float((run(ours) - run(theirs)).abs().max())
    medians = alternate({"difflux": lambda: run(ours), "diffusers": lambda: run(theirs)}, repeat)
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"AudioLDM UNet, published size ({params:.0f}M parameters), one step, batch 2, 128x16 latents, CPU fp32 "
          f"(median of {repeat})")
    print(
        f"  diffusers {medians['diffusers']:8.3f} s    difflux {medians['difflux']:8.3f} s    ratio "
        f"{medians['difflux'] / medians['diffusers']:.2f} (goal <= 1.0)   max |noise pred diff| {diff:.1e}"
    )


def bench_cli(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _audioldm(Path(tmp))
        target = Path(tmp) / "clip.wav"
        command = [
            sys.executable, "-m", "difflux.cli", "generate", str(Path(tmp) / "pipe"), "--prompt", "rain",
            "--steps", "10", "--audio-length", "0.25", "--seed", "0", "--output", str(target),
        ]
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        size = target.stat().st_size
    print(f"difflux generate, tiny AudioLDM, 0.25 s clip, 10 steps, command to .wav ({size} bytes): "
          f"median {statistics.median(times):.2f} s of {repeat} (fresh process each)")


def _midi_piece(seconds: float = 60.0) -> bytes:
    """A MIDI file: piano, bass, strings and a lead (overlapping notes, varied velocities and lengths,
    sustain pedal on the piano) over a drum kit in eighth notes."""
    import io

    import pretty_midi

    rng = np.random.default_rng(0)
    song = pretty_midi.PrettyMIDI()
    for program, per_second in ((0, 16), (33, 4), (48, 6), (81, 8)):
        track = pretty_midi.Instrument(program=program)
        for start in np.sort(rng.uniform(0, seconds, int(seconds * per_second))):
            length = float(rng.choice([0.05, 0.25, 0.5, 1.0, 3.0]))
            track.notes.append(pretty_midi.Note(int(rng.integers(30, 120)), int(rng.integers(28, 96)),
                                                float(start), float(start) + length))
        if program == 0:
            for k, time_ in enumerate(np.arange(0.0, seconds, 2.0)):
                track.control_changes.append(pretty_midi.ControlChange(64, 127 if k % 2 == 0 else 0, float(time_)))
        song.instruments.append(track)
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    kit.notes.extend(
        pretty_midi.Note(100, int(rng.choice([36, 38, 42, 46])), float(t), float(t) + 0.1)
        for t in np.arange(0.0, seconds, 0.125)
    )
    song.instruments.append(kit)
    out = io.BytesIO()
    song.write(out)
    return out.getvalue()


def bench_midi(repeat: int) -> None:
    from difflux_audio import MidiProcessor
    from diffusers.pipelines.deprecated.spectrogram_diffusion.midi_utils import MidiProcessor as DiffusersMidi

    data = _midi_piece()
    ours, theirs = MidiProcessor(), DiffusersMidi()
    tokens = ours(data)
    if tokens != [[int(t) for t in segment] for segment in theirs(data)]:
        raise SystemExit("MidiProcessor: the tokens differ from Diffusers'")
    medians = alternate({"diffusers": partial(theirs, data), "difflux": partial(ours, data)}, max(repeat, 5))
    print(
        f"MidiProcessor, 60 s MIDI ({len(data)} bytes, {len(tokens)} segments): diffusers "
        f"{medians['diffusers'] * 1e3:8.1f} ms    difflux {medians['difflux'] * 1e3:8.1f} ms    ratio "
        f"{medians['difflux'] / medians['diffusers']:.2f}   tokens equal"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=["tiny", "tts", "unet", "cli", "midi", "all"], default="all")
    args = parser.parse_args()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    if args.case in ("tiny", "all"):
        bench_tiny(args.steps, args.repeat)
    if args.case == "tts":
        bench_tiny(args.steps, args.repeat, only="AudioLDM 2 TTS")
    if args.case in ("unet", "all"):
        bench_unet(args.repeat)
    if args.case in ("cli", "all"):
        bench_cli(args.repeat)
    if args.case in ("midi", "all"):
        bench_midi(args.repeat)


if __name__ == "__main__":
    main()
