"""MidiProcessor: MIDI files -> Spectrogram Diffusion's note-event tokens.

Real MIDI files written with pretty_midi (note-seq's own MIDI library) are tokenized token for token
as Diffusers 0.42.1's ``MidiProcessor`` does (the oracle); one small file against tokens worked out by
hand from the vocabulary; path / bytes / PathLike; the errors; the missing ``[midi]`` extra; tokens
from a MIDI file through the tiny pipeline against Diffusers; ``pipe(midi=...)``; ``difflux generate --midi``.
"""

from __future__ import annotations

import io
import sys
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from difflux import cli
from difflux_stable_diffusion.testing import gen, load_difflux

from conftest import export_melgan_stand_in, rel_diff, tiny_spectrogram_diffusion

pretty_midi = pytest.importorskip("pretty_midi", reason="writing the test MIDI files needs pretty_midi (note-seq's)")

Note = tuple[int, int, float, float, int]  # program, pitch, start (s), end (s), velocity


def _midi(notes: list[Note], drums: list[tuple[int, float]] = (), pedal: list[tuple[int, float, int]] = ()) -> bytes:
    """A MIDI file: ``notes``, ``drums`` (pitch, start; 0.1 s hits), sustain ``pedal`` (program, time, value)."""
    song = pretty_midi.PrettyMIDI()
    tracks: dict[int, Any] = {}
    for program, pitch, start, end, velocity in notes:
        track = tracks.setdefault(program, pretty_midi.Instrument(program=program))
        track.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=start, end=end))
    for program, time, value in pedal:
        track = tracks.setdefault(program, pretty_midi.Instrument(program=program))
        track.control_changes.append(pretty_midi.ControlChange(number=64, value=value, time=time))
    song.instruments.extend(tracks.values())
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes.extend(pretty_midi.Note(velocity=100, pitch=p, start=t, end=t + 0.1) for p, t in drums)
        song.instruments.append(kit)
    out = io.BytesIO()
    song.write(out)
    return out.getvalue()


def _random_piece(seed: int, seconds: float, count: int) -> bytes:
    """Several programs, velocities, short and long (segment-crossing) notes, pedal, drums."""
    rng = np.random.default_rng(seed)
    notes: list[Note] = []
    for program in (0, 27, 33, 71, 100):
        for _ in range(count):
            start = float(rng.uniform(0, seconds))
            length = float(rng.choice([0.01, 0.1, 0.4, 2.0, 7.0]))
            notes.append((program, int(rng.integers(24, 96)), start, start + length, int(rng.integers(1, 128))))
    drums = [(int(rng.choice([36, 38, 42, 46])), k * 0.25) for k in range(int(seconds * 4))]
    pedal = [(0, float(t), int(v)) for t, v in zip(np.sort(rng.uniform(0, seconds, 8)), [127, 0] * 4)]
    return _midi(notes, drums, pedal)


SONGS: dict[str, Callable[[], bytes]] = {
    "one-note": lambda: _midi([(0, 60, 0.5, 1.5, 80)]),
    "chords-overlapping-velocities": lambda: _midi(
        [(0, p, t, t + 1.5, v) for t, v in ((0.0, 30), (0.5, 127), (1.0, 64)) for p in (60, 64, 67)]
        + [(0, 60, 0.2, 0.3, 100), (0, 72, 1.0, 1.0 + 0.005, 90)]  # a repeated pitch; a 5 ms note
    ),
    # programs inside Slakh classes map to the class's first (5 -> 4, 27 -> 26, 100 -> 88); 42 is one
    "programs": lambda: _midi([(p, 50 + i, 0.1 * i, 0.1 * i + 0.3, 90) for i, p in enumerate((5, 27, 42, 100, 127))]),
    "drums-and-bass": lambda: _midi(
        [(33, 40, k * 0.5, k * 0.5 + 0.45, 100) for k in range(8)], drums=[(36 + k % 3, k * 0.25) for k in range(16)]
    ),
    "sustain-pedal": lambda: _midi(
        [(0, 60, 0.0, 0.2, 80), (0, 64, 0.5, 0.6, 80), (0, 67, 2.0, 2.1, 80), (0, 60, 3.0, 3.5, 80)],
        pedal=[(0, 0.1, 127), (0, 1.5, 0), (0, 2.05, 127), (0, 6.0, 0)],  # the last hold crosses 5.12 s
    ),
    "ties-across-segments": lambda: _midi(
        [(0, 60, 4.0, 6.0, 80), (40, 72, 5.0, 11.0, 80), (0, 48, 5.12, 5.5, 80), (40, 74, 10.24, 10.5, 80)]
    ),
    "long-silence": lambda: _midi([(0, 60, 0.0, 0.5, 80), (0, 62, 25.0, 25.5, 80)]),
    "multi-segment-piece": lambda: _random_piece(0, 20.0, 40),
}


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("midi")
    paths = {name: folder / f"{name}.mid" for name in SONGS}
    for name, build in SONGS.items():
        paths[name].write_bytes(build())
    return paths


@pytest.fixture(scope="module")
def ours() -> Any:
    from difflux_audio import MidiProcessor

    return MidiProcessor()


@pytest.fixture(scope="module")
def theirs() -> Any:
    from diffusers.pipelines.deprecated.spectrogram_diffusion.midi_utils import MidiProcessor

    return MidiProcessor()


@pytest.mark.parametrize("name", list(SONGS))
def test_tokens_match_diffusers(name: str, songs: dict[str, Path], ours: Any, theirs: Any) -> None:
    expected = [[int(t) for t in segment] for segment in theirs(str(songs[name]))]
    got = ours(str(songs[name]))
    assert got == expected
    assert all(len(segment) == 2048 and all(type(t) is int for t in segment) for segment in got)


def test_tokens_worked_out_by_hand(ours: Any) -> None:
    """One note (program 0, pitch 60) from 5.0 s to 6.0 s: 6 s is 301 frames, two 5.12 s segments."""
    got = ours(_midi([(0, 60, 5.0, 6.0, 100)]))
    tie, eos, shift, program, velocity, pitch = 1134, 1, 3, 1135, 1132, 1004
    assert got[0][:6] == [tie, shift + 500, program + 0, velocity + 1, pitch + 60, eos]
    # segment 1 starts at step 512 with the note sounding; the offset's program repeats the state's: left out
    assert got[1][:7] == [program + 0, pitch + 60, tie, shift + 88, velocity + 0, pitch + 60, eos]
    assert not any(got[0][6:]) and not any(got[1][7:])


def test_path_bytes_and_pathlike_agree(songs: dict[str, Path], ours: Any) -> None:
    path = songs["ties-across-segments"]
    assert ours(path) == ours(str(path)) == ours(path.read_bytes()) == ours(bytearray(path.read_bytes()))


def test_missing_file(ours: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no MIDI file at '.*nowhere\.mid'"):
        ours(tmp_path / "nowhere.mid")


def test_not_a_midi_file(ours: Any, tmp_path: Path) -> None:
    from difflux_audio.midi import MidiError

    (tmp_path / "notes.mid").write_text("C4 E4 G4\n")
    with pytest.raises(MidiError, match=r"'.*notes\.mid' is not a readable MIDI file"):
        ours(tmp_path / "notes.mid")
    with pytest.raises(MidiError, match=r"the MIDI data \(4 bytes\) is not a readable MIDI file"):
        ours(b"RIFF")


def test_midi_without_notes(ours: Any, tmp_path: Path) -> None:
    from difflux_audio.midi import MidiError

    (tmp_path / "silent.mid").write_bytes(_midi([], pedal=[(0, 1.0, 127)]))
    with pytest.raises(MidiError, match=r"'.*silent\.mid' holds no notes"):
        ours(tmp_path / "silent.mid")


def test_not_a_path(ours: Any) -> None:
    with pytest.raises(TypeError, match="expected a MIDI file path or its bytes, got int"):
        ours(3)


def test_too_dense_a_segment(ours: Any, theirs: Any) -> None:
    """Diffusers returns such a segment unpadded, longer than the notes encoder takes; difflux says where."""
    from difflux_audio.midi import MidiError

    dense = _midi([(p, 20 + i % 80, i * 0.004, i * 0.004 + 0.002, 90) for i in range(700) for p in (0,)])
    assert max(len(segment) for segment in theirs(dense)) > 2048
    with pytest.raises(MidiError, match=r"segment 0 of the MIDI data .* has \d+ event tokens; at most 2047"):
        ours(dense)


def test_missing_note_seq_names_the_extra(monkeypatch: Any) -> None:
    from difflux_audio.extras import MissingExtraError
    from difflux_audio.midi import MidiProcessor

    monkeypatch.setitem(sys.modules, "note_seq", None)
    with pytest.raises(MissingExtraError, match=r'MidiProcessor .* pip install "difflux-audio\[midi\]"'):
        MidiProcessor()


# -- through the pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(Diffusers' tiny pipeline whose notes encoder takes 2048 tokens of the full vocabulary, difflux's,
    the folder)."""
    theirs = tiny_spectrogram_diffusion(max_length=2048, vocab_size=1536)
    folder = tmp_path_factory.mktemp("spectrogram-midi") / "pipe"
    theirs.save_pretrained(folder)
    return theirs, load_difflux(folder), folder


def test_midi_through_the_pipeline_matches_diffusers(
    pipelines: tuple[Any, Any, Path], songs: dict[str, Path], ours: Any, theirs: Any
) -> None:
    """Two segments, the second starting with the notes the pedal holds across 5.12 s."""
    oracle, pipe, _ = pipelines
    song = songs["sustain-pedal"]
    expected = oracle(theirs(str(song)), num_inference_steps=2, output_type="mel", generator=gen(0)).audios
    out = pipe(ours(song), num_inference_steps=2, output_type="mel", generator=gen(0)).audios
    assert out.shape == expected.shape == (1, 256 * 2, 128)
    assert rel_diff(out, expected) < 1e-5


def test_pipeline_midi_errors_before_the_model_runs(pipelines: tuple[Any, Any, Path], tmp_path: Path) -> None:
    from difflux_audio.midi import MidiError

    pipe = pipelines[1]
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    calls: list[int] = []
    handle = pipe.notes_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(MidiError, match=r"bad\.mid' is not a readable MIDI file"):
            pipe(midi=tmp_path / "bad.mid", output_type="mel")
        with pytest.raises(TypeError, match="pass input_tokens or midi, not both"):
            pipe([[1, 2]], midi=tmp_path / "bad.mid", output_type="mel")
    finally:
        handle.remove()
    assert not calls


def _generate(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def test_generate_from_a_midi_file(
    pipelines: tuple[Any, Any, Path], songs: dict[str, Path], ours: Any, tmp_path: Path
) -> None:
    """``--midi`` reaches ``pipe(midi=...)``, which gives what the tokens of ``MidiProcessor`` give."""
    pytest.importorskip("onnx", reason="exporting the tiny MelGAN stand-in to ONNX needs the onnx package")
    from difflux_audio.spectrogram_diffusion import OnnxRuntimeModel

    pipe, folder = pipelines[1], tmp_path / "with-melgan"
    pipe.register_modules(melgan=OnnxRuntimeModel.from_pretrained(export_melgan_stand_in(tmp_path / "melgan")))
    try:
        pipe.save_pretrained(folder)
        song = songs["one-note"]
        expected = pipe(ours(song), num_inference_steps=1, generator=gen(0)).audios
    finally:
        pipe.register_modules(melgan=None)
    target = tmp_path / "song.wav"
    code, out = _generate("generate", str(folder), "--midi", str(song), "--steps", "1", "--seed", "0",
                          "--output", str(target))
    assert code == 0 and "SpectrogramDiffusionPipeline" in out, out
    with wave.open(str(target)) as clip:
        assert (clip.getnchannels(), clip.getframerate()) == (1, 16000)
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    assert pcm.shape == (expected.size,) == (256 * 4,)
    assert np.abs(pcm - np.round(np.clip(expected.reshape(-1), -1, 1) * 32767)).max() <= 1


def test_generate_refuses_a_missing_midi_file_before_loading(tmp_path: Path, capsys: Any) -> None:
    code, _ = _generate("generate", str(tmp_path / "no-model"), "--midi", str(tmp_path / "missing.mid"),
                        "--output", str(tmp_path / "x.wav"))
    assert code == 2
    assert f"--midi {str(tmp_path / 'missing.mid')!r}: no such file" in capsys.readouterr().err
