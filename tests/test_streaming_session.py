"""StreamSession in-process against the whole-utterance render of InferenceCore.

These tests run the real audio encoder and UNet of the demo avatar in the test process, with no
gRPC, so they can try many chunkings and drive the paced schedule with a fake clock.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from inference_service.audio import AudioEncoding
from inference_service.config import InferenceConfig
from inference_service.core import MouthRequest
from inference_service.features import frame_count
from inference_service.server import build_core
from inference_service.streaming import (
    FRAME_SECONDS,
    INTERRUPT_CLOSE_FRAMES,
    SAMPLES_PER_FRAME,
    StreamSession,
    lookahead_ms,
    required_samples,
)
from lipsync.demo.run import speech_wav
from lipsync.media import read_wav

START_FRAME = 7
# 1.75 s of the speech sample from 2.0 s: speech, the pause at 2.68-3.28 s, speech again.
SLICE = slice(32000, 60000)


@pytest.fixture(scope="module")
def core(demo_data):
    config = InferenceConfig.model_validate(
        {
            "server": {"port": 0},
            "avatars_dir": str(demo_data.avatars_dir),
            "models": {"audio_encoder": str(demo_data.audio_encoder), "device": "cpu"},
        }
    )
    return build_core(config)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The speech slice as int16 samples at 16 kHz."""
    return np.frombuffer(read_wav(speech_wav()).data, dtype="<i2")[SLICE].copy()


_UNARY_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def unary_crops(core, data: bytes, **fields) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame indices, background indices and crops of InferenceCore.render_mouths."""
    key = (data, tuple(sorted(fields.items())))
    if key not in _UNARY_CACHE:
        request = MouthRequest(avatar_id="demo", raw_audio=data, start_frame=START_FRAME, **fields)
        batches = list(core.render_mouths(request))
        _UNARY_CACHE[key] = (
            np.concatenate([b.frame_indices for b in batches]),
            np.concatenate([b.background_indices for b in batches]),
            np.concatenate([b.crops for b in batches]),
        )
    return _UNARY_CACHE[key]


def stream_crops(core, chunks, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame indices, background indices and crops of a session fed with `chunks`."""
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(core, avatar, start_frame=START_FRAME, **options)
        batches = [batch for chunk in chunks for batch in session.push_audio(chunk)]
        batches += session.finish()
        assert session.done
    return (
        np.concatenate([b.frame_indices for b in batches]),
        np.concatenate([b.background_indices for b in batches]),
        np.concatenate([b.crops for b in batches]),
    )


def random_chunks(data: bytes, rng: np.random.Generator, low: int, high: int) -> list[bytes]:
    chunks, offset = [], 0
    while offset < len(data):
        size = int(rng.integers(low, high + 1))
        chunks.append(data[offset : offset + size])
        offset += size
    return chunks


def assert_same_frames(streamed, unary) -> None:
    frames, backgrounds, crops = streamed
    expected_frames, expected_backgrounds, expected_crops = unary
    assert frames.tolist() == expected_frames.tolist()
    assert backgrounds.tolist() == expected_backgrounds.tolist()
    mismatched = [int(i) for i in frames if not np.array_equal(crops[i], expected_crops[i])]
    assert mismatched == []


CHUNKINGS = {
    "one chunk": (10**9, 10**9),
    "odd sizes that split samples": (1, 999),
    "large random": (1000, 20000),
    "one frame of 40 ms": (1280, 1280),
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_chunkings_match_unary_s16(core, speech, chunking):
    data = speech.tobytes()
    unary = unary_crops(core, data, encoding=AudioEncoding.PCM_S16LE)
    rng = np.random.default_rng(sum(map(ord, chunking)))

    chunks = random_chunks(data, rng, *CHUNKINGS[chunking])
    streamed = stream_crops(core, chunks, encoding=AudioEncoding.PCM_S16LE)

    assert_same_frames(streamed, unary)


def test_single_byte_chunks_match_unary(core, speech):
    data = speech[:4800].tobytes()  # 300 ms, 9600 one-byte chunks
    unary = unary_crops(core, data, encoding=AudioEncoding.PCM_S16LE)

    chunks = [data[i : i + 1] for i in range(len(data))]
    streamed = stream_crops(core, chunks, encoding=AudioEncoding.PCM_S16LE)

    assert_same_frames(streamed, unary)


def test_float32_chunks_match_unary(core, speech):
    data = (speech.astype(np.float32) / 32768.0).astype("<f4").tobytes()
    unary = unary_crops(core, data, encoding=AudioEncoding.PCM_F32LE)

    chunks = random_chunks(data, np.random.default_rng(3), 1, 5000)
    streamed = stream_crops(core, chunks, encoding=AudioEncoding.PCM_F32LE)

    assert_same_frames(streamed, unary)


@pytest.mark.parametrize("sample_rate", [44100, 22050, 8000])
def test_resampled_stereo_chunks_match_unary(core, speech, sample_rate):
    mono = speech.astype(np.float32) / 32768.0
    left = soxr.resample(mono, 16000, sample_rate)
    right = np.roll(left, 7) * 0.5
    stereo = np.stack([left, right], axis=1)
    data = np.clip(stereo * 32768.0, -32768, 32767).astype("<i2").tobytes()
    fields = dict(encoding=AudioEncoding.PCM_S16LE, sample_rate=sample_rate, channels=2)
    unary = unary_crops(core, data, **fields)

    chunks = random_chunks(data, np.random.default_rng(sample_rate), 1, 7000)
    streamed = stream_crops(core, chunks, **fields)

    assert_same_frames(streamed, unary)


@pytest.mark.parametrize("lookahead_rows", [0, 3, 8])
def test_frame_ready_exactly_at_required_samples(core, speech, lookahead_rows):
    samples = speech[:16000]
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(
            core, avatar, encoding=AudioEncoding.PCM_S16LE, lookahead_rows=lookahead_rows
        )
        pushed = 0
        for frame in range(12):
            needed = required_samples(frame, lookahead_rows)
            if needed > pushed:
                session.push_audio(samples[pushed : needed - 1].tobytes())
                pushed = needed - 1
                assert session.ready_frames() <= frame, f"frame {frame} ready one sample early"
                session.push_audio(samples[pushed:needed].tobytes())
                pushed = needed
            assert session.ready_frames() > frame, f"frame {frame} not ready at its samples"


def test_lookahead_table():
    assert lookahead_ms(8) == 452.5
    assert [lookahead_ms(rows) for rows in range(8)] == [132.5 + 40 * r for r in range(8)]
    assert required_samples(0, 8) == 7200  # the first frame waits for 450 ms of audio


def test_fewer_lookahead_rows_change_frames_not_count(core, speech):
    data = speech.tobytes()
    unary = unary_crops(core, data, encoding=AudioEncoding.PCM_S16LE)

    frames, _, crops = stream_crops(
        core, [data], encoding=AudioEncoding.PCM_S16LE, lookahead_rows=0
    )

    assert frames.tolist() == unary[0].tolist()
    # The demo UNet reads context rows 7 and 8; with no look-ahead row 8 is a zero row.
    differing = [i for i in frames if not np.array_equal(crops[i], unary[2][i])]
    assert len(differing) > len(frames) // 2


def test_interrupt_closes_mouth_within_bound(core, speech):
    data = speech.tobytes()
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(
            core, avatar, encoding=AudioEncoding.PCM_S16LE, start_frame=START_FRAME
        )
        # 0.6 s: the loud start of the slice; frames 0-7 are then ready.
        before = [b for b in session.push_audio(data[: 2 * 9600])]
        cut_frame = session.next_frame
        after = session.interrupt()
        assert session.next_frame == cut_frame + INTERRUPT_CLOSE_FRAMES + 1
        after += session.finish()
        timeline = session.timeline_samples

    crops = np.concatenate([b.crops for b in before + after])
    frames = np.concatenate([b.frame_indices for b in before + after])
    assert frames.tolist() == list(range(frame_count(1 + timeline // 200)))
    assert cut_frame * SAMPLES_PER_FRAME + session.samples_filled == timeline

    unary = unary_crops(core, data, encoding=AudioEncoding.PCM_S16LE)
    assert all(np.array_equal(crops[i], unary[2][i]) for i in range(cut_frame))

    # What the audio kept before the cut is dropped from frame f + 10 on: those frames equal
    # the frames of silence of the same length.
    silent = unary_crops(core, bytes(2 * timeline), encoding=AudioEncoding.PCM_S16LE)
    closed_from = cut_frame + INTERRUPT_CLOSE_FRAMES
    assert all(np.array_equal(crops[i], silent[2][i]) for i in range(closed_from, len(frames)))
    # The mouth was open at the cut, so the bound is not met trivially.
    assert not np.array_equal(crops[cut_frame - 1], silent[2][cut_frame - 1])


def test_audio_after_interrupt_follows_closing_silence(core, speech):
    data = speech.tobytes()
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(core, avatar, encoding=AudioEncoding.PCM_S16LE)
        session.push_audio(data[:24000])
        cut = session.next_frame * SAMPLES_PER_FRAME
        assert cut > 0
        session.interrupt()
        silence = session.timeline_samples - cut
        batches = session.push_audio(data[24000:]) + session.finish()
        timeline = session.timeline_samples

    assert timeline == cut + silence + (len(data) - 24000) // 2
    expected = frame_count(1 + timeline // 200)
    assert batches[-1].frame_indices[-1] == expected - 1
    assert batches[-1].utterance_frames == expected


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def run_paced(core, audio: np.ndarray, send_at: np.ndarray, *, chunk: int, step_s: float, **opts):
    """Drive a paced session: chunk j goes in once the fake clock reaches send_at[j].

    Returns the emitted frames as (index, silence_fill) pairs, the session, and the number of
    clock steps at which a check of the schedule ran.
    """
    clock = FakeClock()
    began = clock.now
    emitted: list[tuple[int, bool]] = []
    checks = due = 0
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(
            core, avatar, encoding=AudioEncoding.PCM_S16LE, paced=True, clock=clock, **opts
        )
        sent = 0
        while not session.done:
            while sent < len(send_at) and clock.now - began >= send_at[sent]:
                session.push_audio(audio[sent * chunk : (sent + 1) * chunk].tobytes())
                sent += 1
            if sent == len(send_at) and not session.finished:
                session.finish()
            for batch in session.emit_due(clock.now):
                emitted += zip(
                    batch.frame_indices.tolist(), batch.silence_fill.tolist(), strict=True
                )
            if session._start_at is not None:
                # Every frame due by now has been emitted, and none that is not due yet.
                while session._start_at + due * FRAME_SECONDS <= clock.now:
                    due += 1
                assert len(emitted) == min(due, session.total_frames or due)
                checks += 1
            session.render_ahead()
            clock.now += step_s
    return emitted, session, checks


def test_paced_real_time_audio_needs_no_fill(core, speech):
    chunk = 320  # 20 ms
    send_at = np.arange(len(speech) // chunk) * 0.02

    emitted, session, checks = run_paced(core, speech, send_at, chunk=chunk, step_s=0.01)

    assert checks > 100
    assert [frame for frame, _ in emitted] == list(range(session.total_frames))
    assert session.samples_filled == 0
    assert not any(fill for _, fill in emitted)


def test_paced_underrun_is_filled_without_drift(core, speech):
    chunk = 320
    # The client stops sending for 1 s after 0.6 s of audio, then sends the rest in real time.
    audio_time = np.arange(len(speech) // chunk) * 0.02
    send_at = audio_time + np.where(audio_time >= 0.6, 1.0, 0.0)

    emitted, session, _ = run_paced(core, speech, send_at, chunk=chunk, step_s=0.01)

    frames = [frame for frame, _ in emitted]
    filled = [frame for frame, fill in emitted if fill]
    assert frames == list(range(len(frames)))
    # The timeline is the audio plus the silence filled in, and frame i x 40 ms is its clock.
    assert session.timeline_samples == session.samples_received + session.samples_filled
    assert session.samples_received == len(send_at) * chunk
    assert len(frames) == frame_count(1 + session.timeline_samples // 200)
    assert session.samples_filled >= 20 * SAMPLES_PER_FRAME
    # The filled frames form one run that covers the filled samples.
    assert filled == list(range(filled[0], filled[-1] + 1))
    assert len(filled) >= session.samples_filled // SAMPLES_PER_FRAME


def test_paced_interrupt_fills_silence(core, speech):
    chunk = 320
    send_at = np.arange(len(speech) // chunk) * 0.02
    clock = FakeClock()
    began = clock.now
    emitted = []
    with core.avatars.acquire("demo") as (avatar, _):
        session = StreamSession(
            core, avatar, encoding=AudioEncoding.PCM_S16LE, paced=True, clock=clock
        )
        sent = 0
        while len(emitted) < 20:
            while sent < len(send_at) and clock.now - began >= send_at[sent]:
                session.push_audio(speech[sent * chunk : (sent + 1) * chunk].tobytes())
                sent += 1
            for batch in session.emit_due(clock.now):
                emitted += batch.silence_fill.tolist()
            clock.now += 0.01
        cut_frame = session.next_frame
        session.interrupt()
        while len(emitted) < cut_frame + 2 * INTERRUPT_CLOSE_FRAMES:
            for batch in session.emit_due(clock.now):
                emitted += batch.silence_fill.tolist()
            clock.now += 0.01

    assert not any(emitted[:cut_frame])
    assert all(emitted[cut_frame:])
    assert session.interrupts == 1


def test_paced_long_session_keeps_schedule(core):
    # 8 s of a quiet tone: at each of the 600 clock steps the frame count follows
    # start + i x 40 ms exactly, with a clock far from zero.
    tone = (np.sin(np.arange(16000 * 8) * 0.05) * 200).astype("<i2")
    chunk = 1600  # 100 ms
    send_at = np.arange(len(tone) // chunk) * 0.1

    emitted, session, checks = run_paced(
        core, tone, send_at, chunk=chunk, step_s=0.04 / 3, max_ahead=24
    )

    assert checks > 550
    assert [frame for frame, _ in emitted] == list(range(session.total_frames))
    assert session.samples_filled == 0
