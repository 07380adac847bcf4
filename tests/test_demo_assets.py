"""Tests for the built-in demo avatar: drawn frames, stand-in ONNX models and bundled speech."""

from __future__ import annotations

import wave
from pathlib import Path

import cv2
import librosa
import numpy as np
import onnxruntime as ort
import pytest
import scipy.signal

import lipsync.demo
from lipsync.demo.face import (
    DEFAULT_FRAME_COUNT,
    FACE_INPUT_MOUTH_CENTER,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    draw_frame,
    face_box,
)
from lipsync.demo.models import build_audio_encoder, build_unet

SPEECH_PATH = Path(lipsync.demo.__file__).parent / "assets" / "speech.wav"
SAMPLE_RATE = 16000
MEL_WINDOW = 16
FPS = 25

# Mouth area in the 320x320 face input: the lip line and the opening below it.
MOUTH_ROWS = slice(172, 212)
MOUTH_COLUMNS = slice(120, 200)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _wav2lip_mel(samples: np.ndarray) -> np.ndarray:
    """Compute the wav2lip-style log-mel spectrogram, shape [80, T], values in [-4, 4]."""
    emphasized = scipy.signal.lfilter([1.0, -0.97], [1.0], samples)
    spectrum = np.abs(librosa.stft(emphasized, n_fft=800, hop_length=200, win_length=800))
    mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    decibels = 20.0 * np.log10(np.maximum(1e-5, mel_basis @ spectrum)) - 20.0
    return np.clip(8.0 * (decibels + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def _read_speech() -> np.ndarray:
    """Read the bundled speech as float32 samples in [-1, 1]."""
    with wave.open(str(SPEECH_PATH), "rb") as reader:
        frames = reader.readframes(reader.getnframes())
    return np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ort.InferenceSession]:
    folder = tmp_path_factory.mktemp("demo_models")
    return {
        "encoder": _session(build_audio_encoder(folder / "audio_encoder.onnx")),
        "unet": _session(build_unet(folder / "unet.onnx")),
    }


@pytest.fixture(scope="module")
def mel_windows() -> np.ndarray:
    """Mel windows of the bundled speech, one per 25 fps video frame: [N, 1, 80, 16] float32."""
    samples = _read_speech()
    mel = _wav2lip_mel(samples)
    count = int((mel.shape[1] - MEL_WINDOW) * FPS / 80.0) + 1
    windows = [mel[:, int(80 * k / FPS) : int(80 * k / FPS) + MEL_WINDOW] for k in range(count)]
    return np.stack(windows)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def features(models: dict[str, ort.InferenceSession], mel_windows: np.ndarray) -> np.ndarray:
    return models["encoder"].run(None, {"mel_input": mel_windows})[0]


def _audio_tensor(features: np.ndarray, frame: int) -> np.ndarray:
    """Stack feature rows frame - 8 .. frame + 7, zeros outside, as [1, 32, 16, 16]."""
    rows = np.zeros((16, 512), dtype=np.float32)
    for row in range(16):
        source = frame - 8 + row
        if 0 <= source < len(features):
            rows[row] = features[source]
    return rows.reshape(1, 32, 16, 16)


def _face_input(index: int) -> np.ndarray:
    """Crop, resize and centre-crop a drawn frame to the 320x320 BGR uint8 face input."""
    frame, (x1, y1, x2, y2) = draw_frame(index)
    crop = cv2.resize(frame[y1:y2, x1:x2], (328, 328), interpolation=cv2.INTER_CUBIC)
    return crop[4:324, 4:324]


def _unet_input(face: np.ndarray) -> np.ndarray:
    image = face.astype(np.float32).transpose(2, 0, 1) / 255.0
    masked = image.copy()
    masked[:, 5:310, 5:315] = 0.0
    return np.concatenate([image, masked])[None]


def _loud_frame(features: np.ndarray) -> int:
    loudness = features.mean(axis=1)
    pair = np.minimum(loudness[1:], loudness[:-1])
    return int(np.argmax(pair)) + 1


def _silent_frame(features: np.ndarray) -> int:
    """Return a frame in the middle pause whose centre rows are both silent."""
    loudness = features.mean(axis=1)
    middle = len(loudness) // 2
    candidates = [
        k for k in range(middle - 30, middle + 30) if loudness[k] == 0.0 and loudness[k - 1] == 0.0
    ]
    assert candidates, "no silent frame found in the middle of the speech"
    return candidates[len(candidates) // 2]


# Audio encoder


def test_audio_encoder_io_contract(models: dict[str, ort.InferenceSession]) -> None:
    session = models["encoder"]
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    assert [item.name for item in inputs] == ["mel_input"]
    assert inputs[0].shape == ["batch", 1, 80, 16]
    assert inputs[0].type == "tensor(float)"
    assert [item.name for item in outputs] == ["audio_features"]
    assert outputs[0].shape == ["batch", 512]
    assert outputs[0].type == "tensor(float)"

    mel = np.random.default_rng(0).uniform(-4.0, 4.0, size=(3, 1, 80, 16)).astype(np.float32)
    result = session.run(None, {"mel_input": mel})[0]
    assert result.shape == (3, 512)
    assert result.dtype == np.float32
    assert np.all(np.isfinite(result))


def test_audio_encoder_silence_is_zero(models: dict[str, ort.InferenceSession]) -> None:
    silence = np.full((2, 1, 80, 16), -4.0, dtype=np.float32)
    result = models["encoder"].run(None, {"mel_input": silence})[0]
    assert np.abs(result).max() < 1e-6


def test_audio_encoder_speech_is_larger(features: np.ndarray) -> None:
    loudness = features.mean(axis=1)
    silent = _silent_frame(features)
    assert np.abs(features[silent]).max() < 1e-6
    assert loudness.max() > 0.9
    assert loudness.min() >= 0.0
    # Most speech frames give clearly non-zero features.
    assert np.mean(loudness > 0.3) > 0.6


def test_audio_encoder_louder_gives_larger(models: dict[str, ort.InferenceSession]) -> None:
    levels = [-3.5, -2.5, -1.8, -1.0]
    mel = np.stack([np.full((1, 80, 16), level, dtype=np.float32) for level in levels])
    loudness = models["encoder"].run(None, {"mel_input": mel})[0].mean(axis=1)
    assert loudness[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(loudness) > 0.1)


# UNet


def test_unet_io_contract(models: dict[str, ort.InferenceSession]) -> None:
    session = models["unet"]
    inputs = {item.name: item for item in session.get_inputs()}
    outputs = session.get_outputs()
    assert list(inputs) == ["input", "audio"]
    assert inputs["input"].shape == ["batch", 6, 320, 320]
    assert inputs["audio"].shape == ["batch", 32, 16, 16]
    assert all(item.type == "tensor(float)" for item in inputs.values())
    assert [item.name for item in outputs] == ["output"]
    assert outputs[0].shape == ["batch", 3, 320, 320]
    assert outputs[0].type == "tensor(float)"

    rng = np.random.default_rng(1)
    image = rng.uniform(0.0, 1.0, size=(2, 6, 320, 320)).astype(np.float32)
    audio = rng.uniform(-1.0, 3.0, size=(2, 32, 16, 16)).astype(np.float32)
    result = session.run(None, {"input": image, "audio": audio})[0]
    assert result.shape == (2, 3, 320, 320)
    assert result.dtype == np.float32
    assert result.min() >= 0.0
    assert result.max() <= 1.0


def test_unet_silence_keeps_face(
    models: dict[str, ort.InferenceSession], features: np.ndarray
) -> None:
    frame = _silent_frame(features)
    image = _unet_input(_face_input(frame % DEFAULT_FRAME_COUNT))
    audio = _audio_tensor(features, frame)
    result = models["unet"].run(None, {"input": image, "audio": audio})[0]

    difference = np.abs(result - image[:, :3])
    assert difference[:, :, MOUTH_ROWS, MOUTH_COLUMNS].max() < 1e-5
    assert difference.max() < 1e-5


def test_unet_loud_window_opens_mouth(
    models: dict[str, ort.InferenceSession], features: np.ndarray
) -> None:
    frame = _loud_frame(features)
    image = _unet_input(_face_input(frame % DEFAULT_FRAME_COUNT))
    audio = _audio_tensor(features, frame)
    result = models["unet"].run(None, {"input": image, "audio": audio})[0]

    face_mouth = image[0, :3, MOUTH_ROWS, MOUTH_COLUMNS].mean(axis=0)
    output_mouth = result[0, :, MOUTH_ROWS, MOUTH_COLUMNS].mean(axis=0)
    assert face_mouth.mean() - output_mouth.mean() > 0.15
    # A dark interior appears where the face only had lips and skin.
    assert np.sum(output_mouth < 0.2) > 500
    assert np.sum(face_mouth < 0.2) < 50
    # Far from the mouth the face is unchanged.
    assert np.abs(result[0, :, :120] - image[0, :3, :120]).max() < 1e-5
    assert np.abs(result[0, :, 260:] - image[0, :3, 260:]).max() < 1e-5


def test_unet_opening_grows_with_loudness(models: dict[str, ort.InferenceSession]) -> None:
    image = _unet_input(_face_input(0))
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    audio = np.zeros((len(levels), 16, 512), dtype=np.float32)
    audio[:, 7:9, :] = np.array(levels, dtype=np.float32)[:, None, None]
    batch = np.repeat(image, len(levels), axis=0)
    result = models["unet"].run(None, {"input": batch, "audio": audio.reshape(-1, 32, 16, 16)})[0]

    dark_pixels = [
        int(np.sum(result[i, :, MOUTH_ROWS, MOUTH_COLUMNS].mean(axis=0) < 0.2))
        for i in range(len(levels))
    ]
    assert dark_pixels[0] == 0
    assert all(
        later > earlier for earlier, later in zip(dark_pixels[:-1], dark_pixels[1:], strict=True)
    )


def test_unet_ignores_rows_outside_centre(models: dict[str, ort.InferenceSession]) -> None:
    image = _unet_input(_face_input(0))
    audio = np.ones((1, 16, 512), dtype=np.float32)
    audio[:, 7:9, :] = 0.0
    result = models["unet"].run(None, {"input": image, "audio": audio.reshape(1, 32, 16, 16)})[0]
    assert np.abs(result - image[:, :3]).max() < 1e-5


def test_unet_mouth_centred_at_fixed_place(models: dict[str, ort.InferenceSession]) -> None:
    image = _unet_input(_face_input(0))
    audio = np.zeros((1, 16, 512), dtype=np.float32)
    audio[:, 7:9, :] = 1.0
    result = models["unet"].run(None, {"input": image, "audio": audio.reshape(1, 32, 16, 16)})[0]

    rows, columns = np.nonzero(result[0].mean(axis=0) < 0.2)
    center_x, center_y = FACE_INPUT_MOUTH_CENTER
    assert abs((columns.min() + columns.max()) / 2.0 - center_x) <= 1.0
    assert center_y - 12 <= rows.min() <= center_y
    assert center_y < rows.max() <= center_y + 40


def test_models_are_deterministic(tmp_path: Path) -> None:
    for build in (build_audio_encoder, build_unet):
        first = build(tmp_path / "first" / f"{build.__name__}.onnx")
        second = build(tmp_path / "second" / f"{build.__name__}.onnx")
        assert first.read_bytes() == second.read_bytes()
        assert first.stat().st_size < 4_000_000


# Drawn frames


def test_draw_frame_shape_and_determinism() -> None:
    frame, box = draw_frame(7)
    again, box_again = draw_frame(7)
    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert frame.dtype == np.uint8
    assert np.array_equal(frame, again)
    assert box == box_again
    assert not np.array_equal(frame, draw_frame(8)[0])


def test_face_boxes_square_inside_and_moving() -> None:
    assert DEFAULT_FRAME_COUNT >= 100
    boxes = [draw_frame(index)[1] for index in range(DEFAULT_FRAME_COUNT)]
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        assert x2 - x1 == y2 - y1, f"frame {index}: box {boxes[index]} is not square"
        assert 0 <= x1, f"frame {index}: box {boxes[index]} starts left of the frame"
        assert x2 <= FRAME_WIDTH, f"frame {index}: box {boxes[index]} ends right of the frame"
        assert 0 <= y1, f"frame {index}: box {boxes[index]} starts above the frame"
        assert y2 <= FRAME_HEIGHT, f"frame {index}: box {boxes[index]} ends below the frame"
        assert x2 - x1 >= 120
    assert len(set(boxes)) >= 20
    assert boxes == [face_box(index) for index in range(DEFAULT_FRAME_COUNT)]


def test_face_box_scales_with_frame_size() -> None:
    frame, (x1, y1, x2, y2) = draw_frame(3, width=640, height=360)
    assert frame.shape == (360, 640, 3)
    assert x2 - x1 == y2 - y1
    assert 0 <= x1 < x2 <= 640
    assert 0 <= y1 < y2 <= 360
    with pytest.raises(ValueError, match="invalid frame size"):
        draw_frame(0, width=100, height=100)


def test_face_input_lips_at_fixed_place() -> None:
    center_x, center_y = FACE_INPUT_MOUTH_CENTER
    for index in range(0, DEFAULT_FRAME_COUNT, 6):
        face = _face_input(index).astype(np.float32)
        # The lip line is the darkest row in the middle of the mouth.
        brightness = face[160:200, 150:170].sum(axis=2).mean(axis=1)
        lip_line = 160 + int(np.argmin(brightness))
        assert abs(lip_line - center_y) <= 3, f"frame {index}: lip line at row {lip_line}"
        # The lips are the reddest pixels around the mouth.
        red = face[165:205, 60:260, 2] - face[165:205, 60:260, 1] > 50
        columns = np.nonzero(red.any(axis=0))[0] + 60
        middle = (columns.min() + columns.max()) / 2.0
        assert abs(middle - center_x) <= 3, f"frame {index}: lips centred at x={middle}"


# Bundled speech


def test_speech_wav_format() -> None:
    assert SPEECH_PATH.stat().st_size < 250_000
    with wave.open(str(SPEECH_PATH), "rb") as reader:
        assert reader.getframerate() == SAMPLE_RATE
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        duration = reader.getnframes() / SAMPLE_RATE
    assert 4.0 <= duration <= 7.0


def test_speech_wav_has_middle_pause() -> None:
    samples = _read_speech()
    hop = SAMPLE_RATE // 100
    peaks = np.abs(samples[: len(samples) // hop * hop]).reshape(-1, hop).max(axis=1)
    silent = peaks < 0.003
    # Maximum length of a silent run that starts after the first second and ends before the last.
    longest = 0
    run = 0
    for index, is_silent in enumerate(silent):
        run = run + 1 if is_silent else 0
        if 100 <= index - run + 1 and index < len(silent) - 100:
            longest = max(longest, run)
    assert 0.5 <= longest / 100.0 <= 0.8
    assert np.abs(samples).max() > 0.3
