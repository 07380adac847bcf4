"""The numpy mel spectrogram against wav2lip's librosa and scipy implementation."""

from __future__ import annotations

import wave
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal

from inference_service.mel import mel_filterbank, melspectrogram

SR = 16000
# Largest accepted difference on the normalised [-4, 4] scale.
TOLERANCE = 1e-5
SPEECH_WAV = Path(__file__).resolve().parents[1] / "lipsync" / "demo" / "assets" / "speech.wav"


def reference_melspectrogram(y: np.ndarray, pad_mode: str = "constant") -> np.ndarray:
    """wav2lip's audio.melspectrogram, written out plainly, transposed to [T, 80]."""
    emphasized = scipy.signal.lfilter([1, -0.97], [1], y)
    stft = librosa.stft(y=emphasized, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    mel = np.dot(basis, np.abs(stft))
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    normalized = np.clip((2 * 4.0) * ((db - -100) / 100) - 4.0, -4.0, 4.0)
    return normalized.T


def speech_signal() -> np.ndarray:
    """The demo speech clip at 16 kHz, or a synthetic voiced signal when it is missing."""
    if SPEECH_WAV.exists():
        with wave.open(str(SPEECH_WAV), "rb") as wav:
            assert wav.getsampwidth() == 2
            channels = wav.getnchannels()
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        y = pcm.astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768.0
        if rate != SR:
            y = librosa.resample(y, orig_sr=rate, target_sr=SR)
        return y.astype(np.float32)

    rng = np.random.default_rng(7)
    t = np.arange(3 * SR) / SR
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(h * phase) / h for h in range(1, 30))
    syllables = np.abs(np.sin(2 * np.pi * 2.5 * t))
    noise = 0.02 * rng.standard_normal(t.size)
    return (0.2 * syllables * voiced + noise).astype(np.float32)


def tone(frequency: float, amplitude: float = 0.5, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def signal_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    loud_sine = tone(220.0, amplitude=3.0)
    return {
        "speech": speech_signal(),
        "tone_100hz": tone(100.0),
        "tone_1khz": tone(1000.0),
        "tone_7khz": tone(7000.0),
        "white_noise": (0.3 * rng.standard_normal(SR)).astype(np.float32),
        "silence": np.zeros(SR, dtype=np.float32),
        "clipped_sine": np.clip(loud_sine, -1.0, 1.0),
        "sine_beyond_1": loud_sine,
        "one_sample": np.array([0.25], dtype=np.float32),
        "two_samples": np.array([0.25, -0.5], dtype=np.float32),
        "199_samples": (0.1 * rng.standard_normal(199)).astype(np.float32),
        "401_samples": (0.1 * rng.standard_normal(401)).astype(np.float32),
        "799_samples": (0.1 * rng.standard_normal(799)).astype(np.float32),
        "3000_samples": (0.1 * rng.standard_normal(3000)).astype(np.float32),
    }


CASES = signal_cases()


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("name", list(CASES))
def test_melspectrogram_matches_librosa(name: str, pad_mode: str) -> None:
    y = CASES[name]

    expected = reference_melspectrogram(y, pad_mode)
    actual = melspectrogram(y, pad_mode=pad_mode)

    assert actual.shape == expected.shape
    difference = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    print(f"{name} {pad_mode}: max abs difference {difference:.3g}")
    assert difference <= TOLERANCE


def test_melspectrogram_float64_input_matches_librosa() -> None:
    y = CASES["speech"].astype(np.float64)

    difference = np.max(np.abs(melspectrogram(y) - reference_melspectrogram(y)))

    assert difference <= TOLERANCE


@pytest.mark.parametrize("n_samples", [1, 199, 200, 201, 2999, 3000, 16000, 16123])
def test_melspectrogram_shape(n_samples: int) -> None:
    y = np.zeros(n_samples, dtype=np.float32)

    mel = melspectrogram(y)

    assert mel.shape == (1 + n_samples // 200, 80)
    assert mel.dtype == np.float32


def test_melspectrogram_range() -> None:
    for name, y in CASES.items():
        mel = melspectrogram(y)
        assert mel.min() >= -4.0, name
        assert mel.max() <= 4.0, name


def test_melspectrogram_silence_is_floor() -> None:
    mel = melspectrogram(np.zeros(SR, dtype=np.float32))

    assert np.all(mel == -4.0)


def test_melspectrogram_rejects_unknown_pad_mode() -> None:
    with pytest.raises(ValueError, match="'edge'"):
        melspectrogram(CASES["tone_1khz"], pad_mode="edge")


def test_melspectrogram_rejects_empty_audio() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        melspectrogram(np.zeros(0, dtype=np.float32))


def test_melspectrogram_rejects_nan() -> None:
    y = CASES["tone_1khz"].copy()
    y[10] = np.nan

    with pytest.raises(ValueError, match="1 NaN or Inf"):
        melspectrogram(y)


def test_melspectrogram_rejects_integer_audio() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        melspectrogram(np.zeros(1000, dtype=np.int16))


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (16000, 800, 80, 55.0, 7600.0),
        (16000, 512, 40, 0.0, 8000.0),
        (22050, 1024, 128, 20.0, 11025.0),
        (16000, 800, 80, 1200.0, 7600.0),
    ],
)
def test_filterbank_matches_librosa(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> None:
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)

    actual = mel_filterbank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)

    assert actual.shape == (n_mels, 1 + n_fft // 2)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0.0)


def test_filterbank_is_cached_and_read_only() -> None:
    first = mel_filterbank()
    second = mel_filterbank()

    assert first is second
    assert not first.flags.writeable


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmin": 100.0, "fmax": 50.0},
        {"fmax": 9000.0},
        {"fmin": -1.0},
        {"n_mels": 0},
    ],
)
def test_filterbank_rejects_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        mel_filterbank(**kwargs)
