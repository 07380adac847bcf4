"""Decoding of request audio into the 16 kHz mono float32 signal the mel spectrogram expects.

The reference loads audio with ``librosa.load(path, sr=16000)``: float32 samples, stereo
averaged to mono, then resampled with soxr at "HQ" quality and cut or zero-padded to
``ceil(n * 16000 / sr)`` samples. `decode_pcm` does the same for raw PCM bytes.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import soxr

from inference_service.features import (
    MEL_ROWS_PER_SECOND,
    MEL_WINDOW_ROWS,
    VIDEO_FPS,
    frame_count,
)
from inference_service.mel import HOP_LENGTH, SAMPLE_RATE
from lipsync.errors import InvalidArgument

TARGET_SAMPLE_RATE = SAMPLE_RATE
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000


class AudioEncoding(enum.IntEnum):
    """Sample layout of request audio, with the values of the protobuf enum AudioEncoding."""

    PCM_S16LE = 1
    PCM_F32LE = 2


_SAMPLE_DTYPES = {
    AudioEncoding.PCM_S16LE: np.dtype("<i2"),
    AudioEncoding.PCM_F32LE: np.dtype("<f4"),
}

# Scale of 16-bit samples, the one libsndfile applies when librosa.load reads 16-bit WAV.
_S16_SCALE = np.float32(1.0 / 32768.0)


def decode_pcm(
    data: bytes,
    *,
    encoding: AudioEncoding,
    sample_rate: int,
    channels: int,
    max_seconds: float,
) -> np.ndarray:
    """Decode raw PCM bytes to mono float32 audio at 16 kHz.

    Parameters
    ----------
    data : bytes-like
        Little-endian samples, interleaved (L, R, L, R, ...) when `channels` is 2.
    encoding : AudioEncoding
        PCM_S16LE samples are scaled by 1 / 32768. PCM_F32LE samples are used as they are,
        including values outside [-1, 1], unless resampling them overflows float32.
    sample_rate : int
        Sample rate of `data` in Hz, from `MIN_SAMPLE_RATE` to `MAX_SAMPLE_RATE`.
    channels : int
        1 (mono) or 2 (stereo, downmixed to the mean of the two channels).
    max_seconds : float > 0
        Longest accepted duration. It is checked from the byte count before any sample is
        decoded.

    Returns
    -------
    np.ndarray [n], float32
        Mono audio at `TARGET_SAMPLE_RATE`. Like ``librosa.load``, it has
        ``ceil(m * 16000 / sample_rate)`` samples for ``m`` samples per channel.

    Raises
    ------
    InvalidArgument
        If a request field is invalid. The message names the field (raw_audio, sample_rate,
        audio_channels or audio_encoding), the value and what is allowed.
    """
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    encoding = _validate_layout(encoding, sample_rate, channels)
    sample_dtype = _SAMPLE_DTYPES[encoding]

    n_bytes = memoryview(data).nbytes
    _validate_size(n_bytes, sample_dtype.itemsize, encoding, channels)

    samples_per_channel = n_bytes // (sample_dtype.itemsize * channels)
    duration = samples_per_channel / sample_rate
    if duration > max_seconds:
        raise InvalidArgument(
            f"raw_audio is {duration:.3f} s long ({samples_per_channel} samples per channel at "
            f"{sample_rate} Hz), which exceeds the limit of {max_seconds:g} s "
            "(limits.max_audio_seconds). Split the audio into shorter requests."
        )

    samples = np.frombuffer(data, dtype=sample_dtype)
    if sample_dtype.kind == "i":
        samples = samples.astype(np.float32) * _S16_SCALE
    else:
        samples = samples.astype(np.float32)
        _validate_finite(samples)

    if channels == 2:
        # 0.5 * L + 0.5 * R rounds like librosa.load's float32 (L + R) / 2 except near the
        # float32 overflow and underflow limits, and unlike it cannot overflow.
        samples = 0.5 * samples[0::2] + 0.5 * samples[1::2]

    resampled = resample(samples, sample_rate, TARGET_SAMPLE_RATE)
    if sample_dtype.kind == "f" and resampled is not samples:
        _validate_resampled(resampled, sample_rate)
    return resampled


def _validate_layout(encoding: AudioEncoding, sample_rate: int, channels: int) -> AudioEncoding:
    if channels not in (1, 2):
        raise InvalidArgument(
            f"audio_channels is {channels}, but it must be 1 (mono) or 2 (interleaved stereo)."
        )
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidArgument(
            f"sample_rate is {sample_rate} Hz, but it must be from {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz. Resample the audio to a rate in that range."
        )
    try:
        return AudioEncoding(encoding)
    except ValueError:
        allowed = ", ".join(f"{member.name} ({member.value})" for member in AudioEncoding)
        raise InvalidArgument(
            f"audio_encoding is {encoding}, but it must be one of {allowed}."
        ) from None


def _validate_size(n_bytes: int, sample_size: int, encoding: AudioEncoding, channels: int) -> None:
    if n_bytes == 0:
        raise InvalidArgument("raw_audio is empty. Send the speech samples to render.")
    if n_bytes % sample_size:
        raise InvalidArgument(
            f"raw_audio has {n_bytes} bytes, which is not a multiple of the {sample_size}-byte "
            f"sample size of {encoding.name}. Send whole samples."
        )

    n_samples = n_bytes // sample_size
    if n_samples % channels:
        raise InvalidArgument(
            f"raw_audio has {n_samples} samples, which is not a whole number of stereo frames "
            "(audio_channels is 2). Send an even number of interleaved samples."
        )


def _validate_finite(samples: np.ndarray) -> None:
    not_finite = ~np.isfinite(samples)
    n_not_finite = int(np.count_nonzero(not_finite))
    if n_not_finite:
        first = int(np.argmax(not_finite))
        raise InvalidArgument(
            f"raw_audio contains {n_not_finite} NaN or Inf samples, the first at sample index "
            f"{first}. Send finite float samples."
        )


def _validate_resampled(resampled: np.ndarray, sample_rate: int) -> None:
    # Finite float32 samples near the float32 maximum overflow in soxr's filter, and the mel
    # spectrogram cannot take the Inf or NaN samples that come out.
    n_not_finite = int(np.count_nonzero(~np.isfinite(resampled)))
    if n_not_finite:
        raise InvalidArgument(
            f"raw_audio contains samples too large to resample from {sample_rate} Hz to "
            f"{TARGET_SAMPLE_RATE} Hz: {n_not_finite} resampled samples overflow float32. "
            "Send float samples in [-1, 1]."
        )


def resample(y: np.ndarray, orig_sr: int, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Resample audio like ``librosa.resample(y, orig_sr=..., target_sr=...)`` with soxr "HQ".

    The output is cut or zero-padded to ``ceil(n * (target_sr / orig_sr))`` samples, the
    length librosa computes in float64, because soxr alone may return one sample fewer.

    Parameters
    ----------
    y : np.ndarray [n], float32 or float64
    orig_sr, target_sr : int > 0
        Sample rates in Hz.

    Returns
    -------
    np.ndarray [ceil(n * target_sr / orig_sr)], dtype of `y`
        `y` itself when the rates are equal.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype not in (np.float32, np.float64):
        raise ValueError(f"y must be a 1-D float32 or float64 array, got {y.dtype} {y.shape}")
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return y

    n_samples = math.ceil(y.size * (float(target_sr) / orig_sr))
    resampled = soxr.resample(np.ascontiguousarray(y), orig_sr, target_sr, quality="HQ")
    if resampled.size >= n_samples:
        return resampled[:n_samples]

    padded = np.zeros(n_samples, dtype=resampled.dtype)
    padded[: resampled.size] = resampled
    return padded


def pad_to_frames(y: np.ndarray, frames: int) -> np.ndarray:
    """Append the fewest zeros that make 16 kHz audio form at least `frames` output frames.

    The result also has at least ``inference_service.features.MIN_SAMPLES`` (3000) samples,
    the shortest audio that forms a mel window, even when `frames` is smaller than the 4
    frames that such audio forms.

    Parameters
    ----------
    y : np.ndarray [n]
        Mono audio at `TARGET_SAMPLE_RATE`.
    frames : int >= 0
        Requested number of output frames (K + 2).

    Returns
    -------
    np.ndarray [max(n, n_min)], dtype of `y`
        `y` itself when it is already long enough, otherwise a zero-padded copy. ``n_min`` is
        the fewest samples for which ``frame_count(1 + n_min // HOP_LENGTH) >= frames``.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array, got shape {y.shape}")
    if frames < 0:
        raise ValueError(f"frames must be non-negative, got {frames}")

    n_samples = max(y.size, _min_samples_for_frames(frames))
    if n_samples == y.size:
        return y

    padded = np.zeros(n_samples, dtype=y.dtype)
    padded[: y.size] = y
    return padded


def _min_samples_for_frames(frames: int) -> int:
    # frame_count(rows) is int((rows - 16) * 25 / 80) + 4 up to float rounding, and never
    # decreases as rows grow. Start at least one row below the exact-arithmetic minimum,
    # because the rounding can make int() come out one lower, and step up with frame_count.
    min_rows = MEL_WINDOW_ROWS
    excess_frames = frames - frame_count(min_rows)
    if excess_frames > 0:
        min_rows += excess_frames * MEL_ROWS_PER_SECOND // VIDEO_FPS - 1
    while frame_count(min_rows) < frames:
        min_rows += 1

    # n samples give 1 + n // HOP_LENGTH mel rows.
    return (min_rows - 1) * HOP_LENGTH
