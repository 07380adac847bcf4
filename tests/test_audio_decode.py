"""PCM decoding, resampling and padding of request audio."""

from __future__ import annotations

import mmap
import time
import tracemalloc
import wave
from pathlib import Path

import librosa
import numpy as np
import pytest

from inference_service.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    TARGET_SAMPLE_RATE,
    AudioEncoding,
    decode_pcm,
    pad_to_frames,
    resample,
)
from lipsync.errors import InvalidArgument

S16 = AudioEncoding.PCM_S16LE
F32 = AudioEncoding.PCM_F32LE
LIMIT_S = 600.0


def s16_bytes(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def f32_bytes(samples: np.ndarray) -> bytes:
    return samples.astype("<f4").tobytes()


def random_s16(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(-32768, 32768, n, dtype=np.int16)


def test_enum_values_match_protobuf() -> None:
    assert S16 == 1
    assert F32 == 2
    assert (MIN_SAMPLE_RATE, TARGET_SAMPLE_RATE, MAX_SAMPLE_RATE) == (8000, 16000, 48000)


def test_s16_mono_scaling() -> None:
    pcm = np.array([-32768, -1, 0, 1, 16384, 32767], dtype=np.int16)

    y = decode_pcm(s16_bytes(pcm), encoding=S16, sample_rate=16000, channels=1, max_seconds=1)

    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, pcm / 32768.0)


def test_f32_mono_passes_samples_through() -> None:
    samples = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)

    y = decode_pcm(f32_bytes(samples), encoding=F32, sample_rate=16000, channels=1, max_seconds=1)

    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, samples)


def test_s16_stereo_downmix_is_exact_mean() -> None:
    rng = np.random.default_rng(1)
    left = random_s16(rng, 5000)
    right = random_s16(rng, 5000)
    interleaved = np.stack([left, right], axis=1).reshape(-1)

    y = decode_pcm(
        s16_bytes(interleaved), encoding=S16, sample_rate=16000, channels=2, max_seconds=1
    )

    expected = (left.astype(np.float64) + right.astype(np.float64)) / 65536.0
    np.testing.assert_array_equal(y, expected)


def test_f32_stereo_downmix_matches_librosa() -> None:
    rng = np.random.default_rng(2)
    channels = rng.uniform(-1.5, 1.5, (2, 4000)).astype(np.float32)
    interleaved = channels.T.reshape(-1)

    y = decode_pcm(
        f32_bytes(interleaved), encoding=F32, sample_rate=16000, channels=2, max_seconds=1
    )

    np.testing.assert_array_equal(y, librosa.to_mono(channels))


def test_f32_samples_beyond_unit_range_are_accepted() -> None:
    samples = np.array([3.0, -5.0, 100.0, 0.5], dtype=np.float32)

    y = decode_pcm(f32_bytes(samples), encoding=F32, sample_rate=16000, channels=1, max_seconds=1)

    np.testing.assert_array_equal(y, samples)


@pytest.mark.parametrize("sample_rate", [8000, 11025, 22050, 32000, 44100, 48000])
def test_resampled_length(sample_rate: int) -> None:
    n = int(1.37 * sample_rate)
    samples = np.random.default_rng(sample_rate).uniform(-0.5, 0.5, n).astype(np.float32)

    y = decode_pcm(
        f32_bytes(samples), encoding=F32, sample_rate=sample_rate, channels=1, max_seconds=10
    )

    assert y.dtype == np.float32
    assert abs(y.size - n * 16000 / sample_rate) <= 2


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
def test_resampling_matches_librosa(sample_rate: int) -> None:
    for n in (1, 7, 441, 44100, 44101, 96001):
        samples = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)

        y = decode_pcm(
            f32_bytes(samples), encoding=F32, sample_rate=sample_rate, channels=1, max_seconds=20
        )

        expected = librosa.resample(samples, orig_sr=sample_rate, target_sr=16000)
        np.testing.assert_array_equal(y, expected, err_msg=f"{n} samples")


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
def test_resampling_preserves_tone_frequency(sample_rate: int) -> None:
    t = np.arange(sample_rate) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)

    y = decode_pcm(
        s16_bytes(np.round(tone * 32767)),
        encoding=S16,
        sample_rate=sample_rate,
        channels=1,
        max_seconds=10,
    )

    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak_hz = np.argmax(spectrum) * TARGET_SAMPLE_RATE / y.size
    assert abs(peak_hz - 1000.0) <= 2.0
    assert np.max(np.abs(y[100:-100])) == pytest.approx(0.5, abs=0.01)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decode_matches_librosa_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pcm = random_s16(rng, 2 * 30000) // 4
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(s16_bytes(pcm))

    y = decode_pcm(s16_bytes(pcm), encoding=S16, sample_rate=44100, channels=2, max_seconds=10)

    expected, _ = librosa.load(path, sr=16000)
    np.testing.assert_array_equal(y, expected)


def test_resample_returns_input_at_target_rate() -> None:
    y = np.zeros(100, dtype=np.float32)

    assert resample(y, 16000) is y


def test_resample_keeps_float64() -> None:
    y = np.random.default_rng(4).uniform(-1, 1, 4410)

    resampled = resample(y, 44100)

    assert resampled.dtype == np.float64
    assert resampled.size == 1600


def error_message(data: bytes, **kwargs) -> str:
    options = {"encoding": S16, "sample_rate": 16000, "channels": 1, "max_seconds": LIMIT_S}
    options.update(kwargs)
    with pytest.raises(InvalidArgument) as error:
        decode_pcm(data, **options)
    return str(error.value)


def test_empty_audio_rejected() -> None:
    message = error_message(b"")

    assert "raw_audio" in message
    assert "empty" in message


@pytest.mark.parametrize(
    ("encoding", "n_bytes", "sample_size"), [(S16, 3, 2), (F32, 6, 4), (F32, 4001, 4)]
)
def test_partial_sample_rejected(encoding: AudioEncoding, n_bytes: int, sample_size: int) -> None:
    message = error_message(bytes(n_bytes), encoding=encoding)

    assert "raw_audio" in message
    assert f"{n_bytes} bytes" in message
    assert f"{sample_size}-byte" in message


def test_stereo_with_odd_sample_count_rejected() -> None:
    message = error_message(bytes(2 * 1001), channels=2)

    assert "raw_audio" in message
    assert "1001 samples" in message
    assert "stereo" in message


@pytest.mark.parametrize("sample_rate", [0, -16000, 7999, 48001, 96000])
def test_sample_rate_out_of_range_rejected(sample_rate: int) -> None:
    message = error_message(bytes(3200), sample_rate=sample_rate)

    assert "sample_rate" in message
    assert f"{sample_rate} Hz" in message
    assert "8000" in message
    assert "48000" in message


@pytest.mark.parametrize("channels", [0, 3, 6, -1])
def test_channel_count_rejected(channels: int) -> None:
    message = error_message(bytes(3200), channels=channels)

    assert "audio_channels" in message
    assert f"is {channels}" in message


@pytest.mark.parametrize("encoding", [0, 3])
def test_unknown_encoding_rejected(encoding: int) -> None:
    message = error_message(bytes(3200), encoding=encoding)

    assert "audio_encoding" in message
    assert f"is {encoding}" in message


def test_non_finite_samples_rejected() -> None:
    samples = np.zeros(100, dtype=np.float32)
    samples[5] = np.nan
    samples[9] = np.inf
    samples[50] = -np.inf

    message = error_message(f32_bytes(samples), encoding=F32)

    assert "raw_audio" in message
    assert "3 NaN or Inf" in message
    assert "index 5" in message


def test_audio_longer_than_limit_rejected() -> None:
    two_seconds = bytes(2 * 2 * 16000)

    message = error_message(two_seconds, max_seconds=1.0)

    assert "raw_audio" in message
    assert "2.000 s" in message
    assert "limit of 1 s" in message


def test_audio_at_limit_accepted() -> None:
    one_second = bytes(2 * 2 * 44100)

    y = decode_pcm(one_second, encoding=S16, sample_rate=44100, channels=2, max_seconds=1.0)

    assert y.size == 16000


def test_limit_checked_before_decoding() -> None:
    # An hour of 48 kHz stereo float32 in an anonymous mapping, whose pages stay untouched
    # unless the decoder reads the samples.
    n_bytes = 3600 * 48000 * 2 * 4
    with mmap.mmap(-1, n_bytes) as one_hour:
        tracemalloc.start()
        started = time.perf_counter()
        message = error_message(
            one_hour, encoding=F32, sample_rate=48000, channels=2, max_seconds=LIMIT_S
        )
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    assert "3600.000 s" in message
    assert elapsed < 0.5
    assert peak < 1_000_000


def reference_frame_count(n_samples: int) -> int | None:
    """Output frames (K + 2) of n samples at 16 kHz, or None when no mel window fits."""
    n_mel_rows = 1 + n_samples // 200
    if n_mel_rows < 16:
        return None
    return int((n_mel_rows - 16) / 80.0 * float(25)) + 4


def test_pad_to_frames_is_minimal() -> None:
    max_samples = 200 * 800
    frames_by_length = np.array(
        [reference_frame_count(n) or -1 for n in range(max_samples)], dtype=np.int64
    )

    for start_length in (0, 1, 2999, 3000, 3001, 5000, 40000, 65432):
        for frames in range(0, 220):
            padded = pad_to_frames(np.ones(start_length, dtype=np.float32), frames)

            long_enough = frames_by_length[start_length:] >= frames
            expected = start_length + int(np.argmax(long_enough))
            assert long_enough.any()
            assert padded.size == expected, (start_length, frames)


def test_pad_to_frames_appends_zeros() -> None:
    y = np.random.default_rng(6).uniform(-1, 1, 4000).astype(np.float32)

    padded = pad_to_frames(y, 50)

    assert padded.dtype == np.float32
    assert reference_frame_count(padded.size) >= 50
    assert reference_frame_count(padded.size - 1) is None or (
        reference_frame_count(padded.size - 1) < 50
    )
    np.testing.assert_array_equal(padded[: y.size], y)
    assert np.all(padded[y.size :] == 0.0)


def test_pad_to_frames_returns_long_audio_unchanged() -> None:
    y = np.zeros(16000, dtype=np.float32)

    assert pad_to_frames(y, 10) is y


def test_pad_to_frames_rejects_negative_frames() -> None:
    with pytest.raises(ValueError, match="-1"):
        pad_to_frames(np.zeros(10, dtype=np.float32), -1)
