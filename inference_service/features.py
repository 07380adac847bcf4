"""Mel windows for the audio encoder and per-frame audio context for the UNet.

These functions restate SyncTalk_2D's "ave" audio path. Video frame ``k`` (25 fps) takes the
16 mel rows starting at ``int(80. * (k / float(25)))``. The audio encoder maps each window to
512 features, the feature rows are padded with a copy of the first and of the last row, and
output frame ``i`` takes the 16 padded rows ``[i - 8, i + 8)``, with zero rows outside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference_service.mel import HOP_LENGTH, SAMPLE_RATE
from lipsync.errors import InvalidArgument

MEL_WINDOW_ROWS = 16
CONTEXT_ROWS = 16
VIDEO_FPS = 25
MEL_ROWS_PER_SECOND = SAMPLE_RATE // HOP_LENGTH

# Shortest audio that forms a mel window, because n samples give 1 + n // HOP_LENGTH mel rows.
MIN_SAMPLES = (MEL_WINDOW_ROWS - 1) * HOP_LENGTH


def window_count(n_mel_rows: int) -> int:
    """Return the number of mel windows K that the reference cuts from `n_mel_rows` rows.

    Raises
    ------
    InvalidArgument
        If there are fewer than `MEL_WINDOW_ROWS` rows, so not even one window fits.
    """
    if n_mel_rows < MEL_WINDOW_ROWS:
        duration_ms = 1000.0 * MIN_SAMPLES / SAMPLE_RATE
        raise InvalidArgument(
            f"raw_audio is too short. It forms {n_mel_rows} mel rows, but the audio encoder "
            f"needs at least {MEL_WINDOW_ROWS}, which take {MIN_SAMPLES} samples "
            f"({duration_ms:g} ms) at {SAMPLE_RATE} Hz. Send longer audio or pad it with silence."
        )

    # The reference's expression, in the same floating-point operations.
    return int((n_mel_rows - MEL_WINDOW_ROWS) / float(MEL_ROWS_PER_SECOND) * float(VIDEO_FPS)) + 2


def frame_count(n_mel_rows: int) -> int:
    """Return the number of output frames K + 2 of an utterance with `n_mel_rows` mel rows.

    Raises
    ------
    InvalidArgument
        If there are fewer than `MEL_WINDOW_ROWS` rows.
    """
    return window_count(n_mel_rows) + 2


def window_start(k: int, n_mel_rows: int) -> int:
    """Return the first mel row of window `k`, clamped so the window ends by the last row.

    Raises
    ------
    InvalidArgument
        If there are fewer than `MEL_WINDOW_ROWS` rows.
    ValueError
        If `k` is outside ``[0, window_count(n_mel_rows))``.
    """
    n_windows = window_count(n_mel_rows)
    if not 0 <= k < n_windows:
        raise ValueError(f"window index {k} is outside [0, {n_windows})")

    return min(unclamped_window_start(k), n_mel_rows - MEL_WINDOW_ROWS)


def unclamped_window_start(k: int) -> int:
    """Return the first mel row of window `k` before the end clamp, ``int(80 * (k / 25))``.

    A stream uses it for the windows it encodes before the utterance's length is known: a
    window that ends by the last mel row computed so far is never clamped.
    """
    if k < 0:
        raise ValueError(f"window index {k} is negative")

    # The reference's expression, in the same floating-point operations.
    return int(float(MEL_ROWS_PER_SECOND) * (k / float(VIDEO_FPS)))


def _window_starts(n_mel_rows: int) -> np.ndarray:
    # The numpy version of window_start for all windows: float64 division and multiplication
    # round exactly like Python floats, and truncation equals int() for these non-negative values.
    indices = np.arange(window_count(n_mel_rows), dtype=np.float64)
    starts = (float(MEL_ROWS_PER_SECOND) * (indices / float(VIDEO_FPS))).astype(np.int64)
    return np.minimum(starts, n_mel_rows - MEL_WINDOW_ROWS)


def mel_windows(mel: np.ndarray) -> np.ndarray:
    """Cut the audio encoder's input windows from a mel spectrogram.

    Parameters
    ----------
    mel : np.ndarray [T_mel, n_mels], float
        Time-major mel spectrogram, as returned by `inference_service.mel.melspectrogram`.

    Returns
    -------
    np.ndarray [K, 1, n_mels, MEL_WINDOW_ROWS], float32
        Window ``k`` is ``mel[start:start + 16].T`` with ``start = window_start(k, T_mel)``,
        and K is ``window_count(T_mel)``.

    Raises
    ------
    InvalidArgument
        If ``T_mel < MEL_WINDOW_ROWS``.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2:
        raise ValueError(f"mel must be a 2-D [T_mel, n_mels] array, got shape {mel.shape}")

    starts = _window_starts(mel.shape[0])

    # [T_mel - 15, n_mels, 16] view, where entry s is mel[s:s + 16].T.
    all_windows = np.lib.stride_tricks.sliding_window_view(mel, MEL_WINDOW_ROWS, axis=0)
    windows = all_windows[starts].astype(np.float32)
    return windows[:, np.newaxis]


def pad_features(features: np.ndarray) -> np.ndarray:
    """Pad the audio encoder's output with a copy of its first row before and its last row after.

    Parameters
    ----------
    features : np.ndarray [K, D]
        One feature row per mel window, K >= 1.

    Returns
    -------
    np.ndarray [K + 2, D], same dtype as `features`
        One row per output frame of the utterance.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(
            f"features must be a 2-D [K, D] array with K >= 1, got shape {features.shape}"
        )

    return np.concatenate([features[:1], features, features[-1:]], axis=0)


def audio_context(
    padded: np.ndarray,
    frame_indices: Sequence[int] | np.ndarray,
    *,
    shape: tuple[int, ...] = (32, 16, 16),
) -> np.ndarray:
    """Gather the UNet's audio input for each requested output frame.

    Frame ``i`` takes the padded feature rows ``[i - 8, i + 8)``. Rows before 0 or from
    ``K + 2`` on are zeros, so every frame gets exactly `CONTEXT_ROWS` rows. SyncTalk_2D's
    ``get_audio_features`` pads with ``zeros_like(auds[:pad])``, which matches this except in
    utterances of fewer than 8 frames, where its padding comes out short.

    Parameters
    ----------
    padded : np.ndarray [K + 2, D], float
        Output of `pad_features`.
    frame_indices : sequence of int [B]
        Output frames, each in ``[0, K + 2)``.
    shape : tuple of int
        The UNet's audio input shape, whose size must equal ``CONTEXT_ROWS * D``: (32, 16, 16)
        for the 512 wav2lip features, and for example (16, 32, 32) for 1024 features.

    Returns
    -------
    np.ndarray [B, *shape], float32
        The 16 context rows of each frame, flattened row-major and reshaped to `shape`.
    """
    padded = np.asarray(padded)
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    if padded.ndim != 2:
        raise ValueError(f"padded must be a 2-D [K + 2, D] array, got shape {padded.shape}")
    n_frames, n_features = padded.shape
    if frame_indices.ndim != 1:
        raise ValueError(f"frame_indices must be 1-D, got shape {frame_indices.shape}")
    if frame_indices.size and not (frame_indices.min() >= 0 and frame_indices.max() < n_frames):
        raise ValueError(
            f"frame indices must be in [0, {n_frames}), got values from "
            f"{frame_indices.min()} to {frame_indices.max()}"
        )
    if int(np.prod(shape)) != CONTEXT_ROWS * n_features:
        raise ValueError(
            f"audio input shape {tuple(shape)} has {int(np.prod(shape))} elements, but "
            f"{CONTEXT_ROWS} context rows of {n_features} features have "
            f"{CONTEXT_ROWS * n_features}"
        )

    half = CONTEXT_ROWS // 2
    rows = frame_indices[:, np.newaxis] + np.arange(-half, CONTEXT_ROWS - half)
    inside = (rows >= 0) & (rows < n_frames)

    context = np.zeros((frame_indices.size, CONTEXT_ROWS, n_features), dtype=np.float32)
    context[inside] = padded[rows[inside]]
    return context.reshape(frame_indices.size, *shape)
