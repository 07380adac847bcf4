"""Mel windows and audio context against plain loops that restate SyncTalk_2D's "ave" path."""

from __future__ import annotations

import numpy as np
import pytest

from inference_service.features import (
    CONTEXT_ROWS,
    MEL_WINDOW_ROWS,
    audio_context,
    frame_count,
    mel_windows,
    pad_features,
    window_count,
    window_start,
)
from inference_service.mel import melspectrogram
from lipsync.errors import InvalidArgument

N_MELS = 80
FEATURES = 512
# The UNet's audio input shape for each feature width: 16 rows of the 512 wav2lip features
# fit (32, 16, 16), and 16 rows of 1024 features fit (16, 32, 32).
SHAPE_FEATURES = [((32, 16, 16), 512), ((16, 32, 32), 1024)]


def reference_window_count(n_mel_rows: int) -> int:
    return int((n_mel_rows - 16) / 80.0 * float(25)) + 2


def reference_window_start(k: int, n_mel_rows: int) -> int:
    start = int(80.0 * (k / float(25)))
    if start + 16 > n_mel_rows:
        start = n_mel_rows - 16
    return start


def reference_windows(mel: np.ndarray) -> np.ndarray:
    windows = []
    for k in range(reference_window_count(mel.shape[0])):
        start = reference_window_start(k, mel.shape[0])
        windows.append(mel[start : start + 16].T[np.newaxis])
    return np.stack(windows)


def reference_context(padded: np.ndarray, index: int) -> np.ndarray:
    """Rows [index - 8, index + 8) of padded, with a zero row wherever the range leaves it."""
    rows = []
    for row in range(index - 8, index + 8):
        if 0 <= row < padded.shape[0]:
            rows.append(padded[row])
        else:
            rows.append(np.zeros(padded.shape[1], dtype=padded.dtype))
    return np.stack(rows)


def synctalk_context(padded: np.ndarray, index: int) -> np.ndarray:
    """SyncTalk_2D's get_audio_features, in numpy in place of torch."""
    left = index - 8
    right = index + 8
    pad_left = 0
    pad_right = 0
    if left < 0:
        pad_left = -left
        left = 0
    if right > padded.shape[0]:
        pad_right = right - padded.shape[0]
        right = padded.shape[0]
    auds = padded[left:right]
    if pad_left > 0:
        auds = np.concatenate([np.zeros_like(auds[:pad_left]), auds], axis=0)
    if pad_right > 0:
        auds = np.concatenate([auds, np.zeros_like(auds[:pad_right])], axis=0)
    return auds


def test_counts_match_reference() -> None:
    for n_mel_rows in range(16, 2001):
        expected = reference_window_count(n_mel_rows)
        assert window_count(n_mel_rows) == expected, n_mel_rows
        assert frame_count(n_mel_rows) == expected + 2, n_mel_rows


def test_window_count_follows_float_rounding() -> None:
    # (T - 16) / 80. * 25. rounds below the exact value for some T, so int() drops by one.
    rounded_down = [t for t in range(16, 2001) if window_count(t) != (t - 16) * 25 // 80 + 2]

    assert rounded_down
    for n_mel_rows in rounded_down:
        assert window_count(n_mel_rows) == reference_window_count(n_mel_rows)


def test_window_starts_match_reference() -> None:
    for n_mel_rows in range(16, 2001):
        for k in range(reference_window_count(n_mel_rows)):
            assert window_start(k, n_mel_rows) == reference_window_start(k, n_mel_rows), (
                n_mel_rows,
                k,
            )


def test_last_windows_are_clamped() -> None:
    for n_mel_rows in range(16, 400):
        last = window_count(n_mel_rows) - 1
        assert window_start(last, n_mel_rows) + MEL_WINDOW_ROWS <= n_mel_rows
        assert window_start(last, n_mel_rows) == n_mel_rows - MEL_WINDOW_ROWS


def test_window_start_rejects_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="window index 2"):
        window_start(2, 16)
    with pytest.raises(ValueError, match="window index -1"):
        window_start(-1, 100)


@pytest.mark.parametrize("n_mel_rows", [16, 17, 19, 20, 50, 333, 384, 1001])
def test_mel_windows_match_reference(n_mel_rows: int) -> None:
    mel = np.random.default_rng(n_mel_rows).uniform(-4, 4, (n_mel_rows, N_MELS))

    windows = mel_windows(mel)

    assert windows.shape == (reference_window_count(n_mel_rows), 1, N_MELS, MEL_WINDOW_ROWS)
    assert windows.dtype == np.float32
    np.testing.assert_array_equal(windows, reference_windows(mel).astype(np.float32))


@pytest.mark.parametrize("n_mel_rows", [0, 1, 8, 15])
def test_too_short_mel_is_invalid_argument(n_mel_rows: int) -> None:
    mel = np.zeros((n_mel_rows, N_MELS), dtype=np.float32)

    with pytest.raises(InvalidArgument, match="raw_audio") as error:
        mel_windows(mel)
    assert f"{n_mel_rows} mel rows" in str(error.value)
    assert "3000 samples" in str(error.value)

    with pytest.raises(InvalidArgument):
        frame_count(n_mel_rows)


def test_minimum_audio_length_forms_windows() -> None:
    assert melspectrogram(np.zeros(2999, dtype=np.float32)).shape[0] == 15
    assert melspectrogram(np.zeros(3000, dtype=np.float32)).shape[0] == 16

    assert mel_windows(melspectrogram(np.zeros(3000, dtype=np.float32))).shape[0] == 2


def test_pad_features_repeats_edge_rows() -> None:
    features = np.random.default_rng(1).standard_normal((7, FEATURES)).astype(np.float32)

    padded = pad_features(features)

    assert padded.shape == (9, FEATURES)
    assert padded.dtype == np.float32
    np.testing.assert_array_equal(padded[0], features[0])
    np.testing.assert_array_equal(padded[1:-1], features)
    np.testing.assert_array_equal(padded[-1], features[-1])


def test_pad_features_single_row() -> None:
    features = np.arange(4.0).reshape(1, 4)

    padded = pad_features(features)

    np.testing.assert_array_equal(padded, np.repeat(features, 3, axis=0))


def test_pad_features_rejects_empty() -> None:
    with pytest.raises(ValueError, match="K >= 1"):
        pad_features(np.zeros((0, FEATURES)))


@pytest.mark.parametrize(("shape", "n_features"), SHAPE_FEATURES)
@pytest.mark.parametrize("n_frames", [3, 4, 7, 8, 9, 16, 17, 40])
def test_audio_context_matches_reference(
    n_frames: int, shape: tuple[int, ...], n_features: int
) -> None:
    padded = np.random.default_rng(n_frames).standard_normal((n_frames, n_features))
    padded = padded.astype(np.float32)
    indices = list(range(n_frames))

    context = audio_context(padded, indices, shape=shape)

    assert context.shape == (n_frames, *shape)
    assert context.dtype == np.float32
    for i in indices:
        expected = reference_context(padded, i)
        np.testing.assert_array_equal(context[i].reshape(CONTEXT_ROWS, n_features), expected)
        np.testing.assert_array_equal(context[i], expected.reshape(shape))


@pytest.mark.parametrize("n_frames", [8, 9, 20, 100])
def test_audio_context_matches_synctalk(n_frames: int) -> None:
    padded = np.random.default_rng(n_frames).standard_normal((n_frames, FEATURES))
    padded = padded.astype(np.float32)

    context = audio_context(padded, range(n_frames))

    for i in range(n_frames):
        expected = synctalk_context(padded, i).reshape(32, 16, 16)
        np.testing.assert_array_equal(context[i], expected)


def test_audio_context_zero_rows_at_edges() -> None:
    padded = np.ones((30, FEATURES), dtype=np.float32)

    context = audio_context(padded, [0, 15, 29]).reshape(3, CONTEXT_ROWS, FEATURES)

    assert np.all(context[0, :8] == 0.0)
    assert np.all(context[0, 8:] == 1.0)
    assert np.all(context[1] == 1.0)
    assert np.all(context[2, :9] == 1.0)
    assert np.all(context[2, 9:] == 0.0)


def test_audio_context_short_utterance() -> None:
    padded = np.ones((3, FEATURES), dtype=np.float32)

    context = audio_context(padded, [0, 1, 2])

    assert context.shape == (3, 32, 16, 16)
    for i in range(3):
        rows = context[i].reshape(CONTEXT_ROWS, FEATURES)
        assert np.count_nonzero(rows.any(axis=1)) == 3


def test_audio_context_in_any_order() -> None:
    padded = np.random.default_rng(5).standard_normal((25, FEATURES)).astype(np.float32)
    indices = np.array([24, 3, 3, 11])

    context = audio_context(padded, indices)

    for position, i in enumerate(indices):
        expected = reference_context(padded, int(i)).reshape(32, 16, 16)
        np.testing.assert_array_equal(context[position], expected)


def test_audio_context_empty_batch() -> None:
    context = audio_context(np.zeros((5, FEATURES), dtype=np.float32), [])

    assert context.shape == (0, 32, 16, 16)


@pytest.mark.parametrize("shape", [(32, 16, 15), (16, 16, 16), (16, 32, 32), (8192, 2)])
def test_audio_context_rejects_bad_shape(shape: tuple[int, ...]) -> None:
    padded = np.zeros((10, FEATURES), dtype=np.float32)

    with pytest.raises(ValueError, match="audio input shape"):
        audio_context(padded, [0], shape=shape)


@pytest.mark.parametrize("index", [-1, 10])
def test_audio_context_rejects_frame_out_of_range(index: int) -> None:
    padded = np.zeros((10, FEATURES), dtype=np.float32)

    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        audio_context(padded, [0, index])
