"""MIDI files to the note-event tokens of Spectrogram Diffusion (:class:`MidiProcessor`).

The vocabulary is MT3's event codec (Gardner et al. 2022, "MT3: Multi-Task Multitrack Music
Transcription", arXiv:2111.03017), as the published ``google/music-spectrogram-diffusion`` model
reads it (Hawthorne et al. 2022, arXiv:2206.05408). Token ids, after 0 = padding, 1 = end of
sequence and 2 = unknown:

=================  ==========  ===================================================================
event              ids         meaning
=================  ==========  ===================================================================
shift              3-1003      time since the segment's start, in 10 ms steps (1 to 1000; longer
                               times are several shifts that add up)
pitch              1004-1131   a note of that MIDI pitch starts (velocity 1) or ends (velocity 0)
velocity           1132-1133   the velocity of the pitch / drum events that follow (0: note off)
tie                1134        ends the list of notes still sounding when the segment starts
program            1135-1262   the MIDI program of the pitch events that follow
drum               1263-1390   a drum hit of that MIDI pitch
=================  ==========  ===================================================================

The music is cut into segments of 256 spectrogram frames of 320 samples at 16 kHz (5.12 s each);
each segment's tokens are: the notes sounding at its start (``program pitch ... tie``), then its
events in time order, each preceded by a shift when time moved, with program and velocity tokens
left out where they repeat the previous one; then end of sequence, padded to 2048 tokens. Non-drum
programs are first mapped to the instrument classes of the Slakh2100 data set the model was trained
on; the sustain pedal (control 64) lengthens the notes it holds.

``note-seq`` reads the MIDI files: the ``[midi]`` extra of difflux-audio.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from difflux.errors import DiffluxError

from .extras import require

__all__ = ["INPUT_LENGTH", "MidiError", "MidiProcessor"]

#: tokens per segment fed to the notes encoder (padded with 0)
INPUT_LENGTH = 2048
#: time resolution of the events: 10 ms steps
STEPS_PER_SECOND = 100
#: the longest single shift (10 s)
MAX_SHIFT_STEPS = 10 * STEPS_PER_SECOND
#: velocity bins besides 0 (note off): one, so every note on has velocity 1
NUM_VELOCITY_BINS = 1
#: spectrogram frames: 320 samples at 16 kHz (50 frames/s), 256 frames per segment
SAMPLE_RATE = 16000
HOP_LENGTH = 320
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH
FRAMES_PER_SEGMENT = 256

_PAD, _EOS, _SPECIAL = 0, 1, 3
_MIDI_VALUES = 128  # pitches, programs, velocities 0..127
_MAX_VELOCITY = 127
# codec indices (token id = index + _SPECIAL): each event type's first index
_SHIFT = 0
_PITCH = _SHIFT + MAX_SHIFT_STEPS + 1
_VELOCITY = _PITCH + _MIDI_VALUES
_TIE = _VELOCITY + NUM_VELOCITY_BINS + 1
_PROGRAM = _TIE + 1
_DRUM = _PROGRAM + _MIDI_VALUES
#: the first MIDI program of each Slakh2100 instrument class; a program maps to the largest one not above it
SLAKH_PROGRAMS = np.array(
    [0, 4, 8, 16, 24, 26, 29, 32, 33, 40, 41, 42, 43, 46, 47, 48, 50, 52, 55, 56, 57, 58, 60, 61, 64, 66, 67, 68,
     69, 70, 71, 73, 80, 88]
)


class MidiError(DiffluxError, ValueError):
    """A MIDI input that cannot become Spectrogram Diffusion tokens: not a MIDI file, no notes, too dense."""


@dataclass(frozen=True)
class _Events:
    """Note onsets and offsets in time order (stable: offsets before onsets at equal times)."""

    steps: np.ndarray  # (n,) int64, non-decreasing: time in 10 ms steps
    tokens: np.ndarray  # (n, 3) int64 codec indices, -1 where absent: program, velocity, pitch | -, velocity, drum
    keys: np.ndarray  # (n,) int64: program * 128 + pitch, -1 for drum hits
    on: np.ndarray  # (n,) bool: a velocity bin above 0 (the note sounds after the event)


class MidiProcessor:
    """MIDI file → one list of 2048 note-event token ids per 5.12 s segment, the ``input_tokens`` of
    :class:`~difflux_audio.spectrogram_diffusion.SpectrogramDiffusionPipeline` (Diffusers'
    ``MidiProcessor``; the vocabulary is described in :mod:`difflux_audio.midi`).

    >>> tokens = MidiProcessor()("song.mid")          # or the file's bytes
    >>> audio = pipe(tokens).audios                   # (1, samples) at 16 kHz

    :raises difflux_audio.extras.MissingExtraError: when note-seq (the ``[midi]`` extra) is not installed.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():  # note-seq's audio helpers warn about a missing ffmpeg, unused here
            warnings.simplefilter("ignore", RuntimeWarning)
            self._note_seq = require("note_seq", "MidiProcessor (MIDI input of Spectrogram Diffusion)")

    def __call__(self, midi: str | os.PathLike[str] | bytes | bytearray) -> list[list[int]]:
        """The token lists of ``midi`` (a path, or a MIDI file's bytes), one per segment, each
        ``INPUT_LENGTH`` ints.

        :raises FileNotFoundError: when the path does not name a file.
        :raises MidiError: when the data is not a MIDI file, holds no notes, or a segment has more
            than 2047 events (Diffusers returns such a list unpadded; the notes encoder cannot take it).
        """
        data, label = _read(midi)
        try:
            sequence = self._note_seq.midi_to_note_sequence(data)
        except Exception as exc:  # note-seq wraps every parser failure in its MIDIConversionError
            raise MidiError(f"MidiProcessor: {label} is not a readable MIDI file ({exc})") from exc
        return self.encode_note_sequence(sequence, label)

    def encode_note_sequence(self, sequence: Any, label: str = "the note sequence") -> list[list[int]]:
        """The token lists of a ``note_seq.NoteSequence`` (before the sustain pedal is applied).

        :raises MidiError: when it holds no notes or a segment is too dense (see :meth:`__call__`).
        """
        sequence = self._note_seq.apply_sustain_control_changes(sequence)
        if not sequence.notes:
            raise MidiError(f"MidiProcessor: {label} holds no notes; Spectrogram Diffusion needs at least one")
        events = _events(sequence.notes)
        num_frames = int(sequence.total_time * SAMPLE_RATE) // HOP_LENGTH + 1
        bases = [f * STEPS_PER_SECOND // FRAME_RATE for f in range(0, num_frames, FRAMES_PER_SEGMENT)]
        last_step = int(events.steps[-1])
        segments = []
        for i, base in enumerate(bases):
            lo = int(np.searchsorted(events.steps, base))
            hi = int(np.searchsorted(events.steps, bases[i + 1])) if i + 1 < len(bases) else len(events.steps)
            ids = _segment(events, base, lo, hi, _sounding(events, min(base, last_step))) + _SPECIAL
            if len(ids) >= INPUT_LENGTH:
                seconds = base / STEPS_PER_SECOND
                raise MidiError(
                    f"MidiProcessor: segment {i} of {label} (from {seconds:g} s) has {len(ids)} event tokens; "
                    f"at most {INPUT_LENGTH - 1} fit the notes encoder. Thin out the notes of that passage"
                )
            padded = np.full(INPUT_LENGTH, _PAD, dtype=np.int64)
            padded[: len(ids)] = ids
            padded[len(ids)] = _EOS
            segments.append(padded.tolist())
        return segments


def _read(midi: Any) -> tuple[bytes, str]:
    """``(the file's bytes, how to name it in errors)``."""
    if isinstance(midi, (bytes, bytearray)):
        return bytes(midi), f"the MIDI data ({len(midi)} bytes)"
    if not isinstance(midi, (str, os.PathLike)):
        raise TypeError(f"MidiProcessor: expected a MIDI file path or its bytes, got {type(midi).__name__}")
    path = Path(midi)
    if not path.is_file():
        raise FileNotFoundError(f"MidiProcessor: no MIDI file at {str(path)!r}")
    return path.read_bytes(), repr(str(path))


def _events(notes: Sequence[Any]) -> _Events:
    """Every note's offset (non-drum notes only) and onset, sorted by time."""
    pitch = np.array([n.pitch for n in notes], dtype=np.int64)
    velocity = np.array([n.velocity for n in notes], dtype=np.int64)
    drum = np.array([n.is_drum for n in notes], dtype=bool)
    program = np.array([n.program for n in notes], dtype=np.int64)
    program = np.where(drum, program, SLAKH_PROGRAMS[np.searchsorted(SLAKH_PROGRAMS, program, side="right") - 1])
    start = np.array([n.start_time for n in notes], dtype=np.float64)
    end = np.array([n.end_time for n in notes], dtype=np.float64)
    # ties in time keep this order: offsets, then onsets; each by (drum, program, pitch), then file order
    order = np.argsort((drum * _MIDI_VALUES + program) * _MIDI_VALUES + pitch, kind="stable")
    melodic = order[~drum[order]]
    times = np.concatenate([end[melodic], start[order]])
    is_drum = np.concatenate([np.zeros(len(melodic), dtype=bool), drum[order]])
    bins = np.concatenate([np.zeros(len(melodic), dtype=np.int64), np.ceil(
        NUM_VELOCITY_BINS * velocity[order] / _MAX_VELOCITY).astype(np.int64)])
    pitches = np.concatenate([pitch[melodic], pitch[order]])
    programs = np.concatenate([program[melodic], program[order]])

    by_time = np.argsort(times, kind="stable")
    is_drum, bins, pitches, programs = is_drum[by_time], bins[by_time], pitches[by_time], programs[by_time]
    tokens = np.stack(
        [
            np.where(is_drum, -1, _PROGRAM + programs),
            _VELOCITY + bins,
            np.where(is_drum, _DRUM, _PITCH) + pitches,
        ],
        axis=1,
    )
    return _Events(
        steps=np.rint(times[by_time] * STEPS_PER_SECOND).astype(np.int64),  # half to even, as Python's round
        tokens=tokens,
        keys=np.where(is_drum, -1, programs * _MIDI_VALUES + pitches),
        on=bins > 0,
    )


def _sounding(events: _Events, step: int) -> np.ndarray:
    """``program pitch`` pairs of the non-drum notes sounding after every event before ``step``, by
    (program, pitch), then the tie token."""
    done = int(np.searchsorted(events.steps, step))
    keys, on = events.keys[:done][::-1], events.on[:done][::-1]
    unique, last = np.unique(keys, return_index=True)  # reversed: the first occurrence is the latest event
    active = unique[(unique >= 0) & on[last]]
    pairs = np.stack([_PROGRAM + active // _MIDI_VALUES, _PITCH + active % _MIDI_VALUES], axis=1)
    return np.append(pairs.ravel(), _TIE)


def _segment(events: _Events, base: int, lo: int, hi: int, state: np.ndarray) -> np.ndarray:
    """Codec indices of one segment: the sounding notes, then events ``lo:hi`` (their steps from ``base``)
    with shifts, repeated program / velocity tokens left out."""
    stream = np.concatenate([state, events.tokens[lo:hi].ravel()])
    owner = np.concatenate([np.full(len(state), -1), np.repeat(np.arange(hi - lo), 3)])
    keep = stream >= 0
    for first, size in ((_PROGRAM, _MIDI_VALUES), (_VELOCITY, NUM_VELOCITY_BINS + 1)):
        where = np.flatnonzero((stream >= first) & (stream < first + size))
        keep[where[1:][stream[where[1:]] == stream[where[:-1]]]] = False
    stream, owner = stream[keep], owner[keep]

    # a shift (the time since the segment's start) before the first token of each event that moved in time
    offsets = events.steps[lo:hi] - base
    moved = np.flatnonzero(offsets > np.concatenate([[0], offsets[:-1]]))
    shift = offsets[moved]
    count = -(-shift // MAX_SHIFT_STEPS)  # shifts longer than the largest are split: 1200 -> 1000, 200
    values = np.full(int(count.sum()), MAX_SHIFT_STEPS, dtype=np.int64)
    rest = shift % MAX_SHIFT_STEPS
    values[(np.cumsum(count) - 1)[rest > 0]] = rest[rest > 0]
    at = np.repeat(np.searchsorted(owner, moved), count)
    return np.insert(stream, at, _SHIFT + values)
