"""Whole utterances through both services against SyncTalk_2D's offline render, written plainly.

The reference below follows wav2lip's ``audio.py``, SyncTalk_2D's ``AudDataset`` and
``get_audio_features`` and the frame loop of ``inference_328.py`` step by step, with librosa,
scipy, OpenCV and ONNX Runtime at batch size 1. It uses no product code: the product only builds
the avatar packages it reads and renders the frames it is compared with.
"""

from __future__ import annotations

import functools
import json
import shutil
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np
import onnxruntime as ort
import pytest
import scipy.signal
import yaml

from lipsync.avatar.build import build_avatar
from lipsync.client import LipsyncClient
from lipsync.demo.run import speech_wav
from lipsync.media import PCM_S16LE, WavAudio
from lipsync.protos import compositing_pb2

# Seconds 2.0-3.6 of the bundled speech: speech, a pause from 2.75 to 3.25 s, then speech again.
SLICE_START, SLICE_END = 32000, 57600
# Near the end of the 125-frame demo loop, so the utterance turns around at the last frame.
START_FRAME = 110
# Every frame must match within this many grey levels; the measured difference is 0.
TOLERANCE = 1
# Backgrounds of the avatars built with other options: few, so the services load them quickly.
VARIANT_FRAMES = 30


# ---------------------------------------------------------------------------------------------
# The reference: wav2lip mel, AudDataset windows, audio encoder, get_audio_features, the UNet and
# the paste of inference_328.py.
# ---------------------------------------------------------------------------------------------


def reference_mel(wav: np.ndarray, pad_mode: str) -> np.ndarray:
    """wav2lip ``audio.melspectrogram(wav).T``: [T, 80] float64."""
    emphasized = scipy.signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(
        y=emphasized, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode=pad_mode
    )
    mel_basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    mel = np.dot(mel_basis, np.abs(stft))

    min_level = np.exp(-100 / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, mel)) - 20
    normalized = np.clip((2 * 4.0) * ((db + 100.0) / 100.0) - 4.0, -4.0, 4.0)
    return normalized.T


def reference_windows(mel: np.ndarray) -> list[np.ndarray]:
    """``AudDataset``: one [1, 80, 16] float32 window per video frame, with the end clamp."""
    data_len = int((mel.shape[0] - 16) / 80.0 * float(25)) + 2
    windows = []
    for k in range(data_len):
        start_idx = int(80.0 * (k / float(25)))
        end_idx = start_idx + 16
        if end_idx > mel.shape[0]:
            end_idx = mel.shape[0]
            start_idx = end_idx - 16
        window = mel[start_idx:end_idx, :]
        assert window.shape[0] == 16
        windows.append(window.T.astype(np.float32)[np.newaxis])
    return windows


def reference_features(wav: np.ndarray, encoder: ort.InferenceSession, pad_mode: str) -> np.ndarray:
    """Audio encoder output per window, padded with a copy of the first and of the last row."""
    outputs = [
        encoder.run(["audio_features"], {"mel_input": window[np.newaxis]})[0]
        for window in reference_windows(reference_mel(wav, pad_mode))
    ]
    features = np.concatenate(outputs, axis=0)
    return np.concatenate([features[:1], features, features[-1:]], axis=0)


def reference_context(features: np.ndarray, index: int) -> np.ndarray:
    """``get_audio_features``: rows [index - 8, index + 8), zero rows outside the utterance."""
    left, right = index - 8, index + 8
    pad_left = pad_right = 0
    if left < 0:
        pad_left = -left
        left = 0
    if right > features.shape[0]:
        pad_right = right - features.shape[0]
        right = features.shape[0]
    rows = features[left:right]
    if pad_left > 0:
        rows = np.concatenate([np.zeros_like(features[:pad_left]), rows], axis=0)
    if pad_right > 0:
        rows = np.concatenate([rows, np.zeros_like(features[:pad_right])], axis=0)
    return rows


def pingpong(start: int, count: int, frame_count: int) -> list[int]:
    """Background frames 0, 1, ..., N-1, N-2, ..., 1, 0, 1, ... from position `start`."""
    cycle = list(range(frame_count)) + list(range(frame_count - 2, 0, -1))
    return [cycle[(start + i) % len(cycle)] for i in range(count)]


@dataclass(frozen=True)
class Variant:
    """Avatar options the reference follows."""

    channel_order: str = "bgr"
    interpolation: int = cv2.INTER_CUBIC
    mel_pad_mode: str = "constant"


def reference_frame(
    image: np.ndarray,
    box: list[int],
    unet: ort.InferenceSession,
    audio_feat: np.ndarray,
    variant: Variant,
) -> np.ndarray:
    """One frame of ``inference_328.py``'s loop: crop, mask, UNet at batch 1, paste back."""
    img = image.copy()
    xmin, ymin, xmax, ymax = box
    crop_img = img[ymin:ymax, xmin:xmax]
    h, w = crop_img.shape[:2]
    crop_img = cv2.resize(crop_img, (328, 328), interpolation=variant.interpolation)
    crop_img_ori = crop_img.copy()
    img_real_ex = crop_img[4:324, 4:324].copy()
    img_real_ex_ori = img_real_ex.copy()
    img_masked = cv2.rectangle(img_real_ex_ori, (5, 5, 310, 305), (0, 0, 0), -1)
    if variant.channel_order == "rgb":
        img_real_ex = cv2.cvtColor(img_real_ex, cv2.COLOR_BGR2RGB)
        img_masked = cv2.cvtColor(img_masked, cv2.COLOR_BGR2RGB)

    img_masked = img_masked.transpose(2, 0, 1).astype(np.float32)
    img_real_ex = img_real_ex.transpose(2, 0, 1).astype(np.float32)
    img_concat = np.concatenate([img_real_ex / 255.0, img_masked / 255.0], axis=0)[np.newaxis]

    pred = unet.run(["output"], {"input": img_concat, "audio": audio_feat[np.newaxis]})[0][0]
    pred = pred.transpose(1, 2, 0) * 255
    pred = np.array(pred, dtype=np.uint8)
    if variant.channel_order == "rgb":
        pred = cv2.cvtColor(pred, cv2.COLOR_RGB2BGR)

    crop_img_ori[4:324, 4:324] = pred
    crop_img_ori = cv2.resize(crop_img_ori, (w, h), interpolation=variant.interpolation)
    img[ymin:ymax, xmin:xmax] = crop_img_ori
    return img


@functools.lru_cache(maxsize=256)
def read_background(path: Path) -> np.ndarray:
    """``cv2.imread`` of a background, decoded once per file because decoding dominates the time."""
    image = cv2.imread(str(path))
    image.flags.writeable = False
    return image


def reference_render(
    package: Path, encoder_path: Path, wav: np.ndarray, start: int, variant: Variant
) -> tuple[list[int], list[np.ndarray]]:
    """Render an utterance from the package files alone; return background indices and frames."""
    spec = yaml.safe_load((package / "avatar.yaml").read_text())
    boxes = json.loads((package / "crop_rects.json").read_text())
    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    unet = ort.InferenceSession(str(package / "unet.onnx"), providers=["CPUExecutionProvider"])
    audio_shape = unet.get_inputs()[1].shape[1:]
    assert unet.get_inputs()[1].name == "audio"

    features = reference_features(wav, encoder, variant.mel_pad_mode)
    backgrounds = pingpong(start, len(features), spec["frame_count"])
    frames = []
    for i, background in enumerate(backgrounds):
        image = read_background(package / "frames" / f"{background:06d}.png")
        audio_feat = reference_context(features, i).reshape(audio_shape)
        frames.append(reference_frame(image, boxes[background], unet, audio_feat, variant))
    return backgrounds, frames


# ---------------------------------------------------------------------------------------------
# The product: the same audio through both services, frames as lossless PNG.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_slice() -> tuple[np.ndarray, WavAudio]:
    """The slice as librosa.load would give it (float32 / 32768) and as 16-bit PCM to send."""
    with wave.open(str(speech_wav())) as wav:
        assert (wav.getsampwidth(), wav.getframerate(), wav.getnchannels()) == (2, 16000, 1)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")[SLICE_START:SLICE_END]
    samples = pcm.astype(np.float32) / 32768.0
    return samples, WavAudio(pcm.tobytes(), PCM_S16LE, 16000, 1)


@pytest.fixture(scope="module")
def client(split_deployment):
    client = LipsyncClient(split_deployment.compositing.address)
    yield client
    client.close()


def service_render(
    client: LipsyncClient, avatar_id: str, audio: WavAudio, start: int
) -> tuple[list[int], list[np.ndarray]]:
    backgrounds, frames = [], []
    responses = client.render_utterance(
        avatar_id, audio, start_frame=start, output_format=compositing_pb2.PNG, timeout_s=120
    )
    for response in responses:
        for frame in response.frames:
            assert frame.index == len(frames)
            backgrounds.append(frame.background_index)
            frames.append(cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR))
    return backgrounds, frames


def frame_differences(got: list[np.ndarray], expected: list[np.ndarray]) -> np.ndarray:
    """Return the max abs pixel difference of each frame pair, int [n]."""
    assert len(got) == len(expected)
    return np.array(
        [
            int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
            for a, b in zip(got, expected, strict=True)
        ]
    )


def first_frames(demo_dir: Path, folder: Path) -> Path:
    """Copy the first `VARIANT_FRAMES` demo backgrounds into `folder`, as 0.png, 1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(VARIANT_FRAMES):
        shutil.copyfile(demo_dir / "frames" / f"{i:06d}.png", folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def variant_avatars(demo_data, tmp_path_factory) -> dict[str, Path]:
    """Avatars with other options, in the services' avatars folder, keyed by avatar id.

    Each is built by `build_avatar` from the first `VARIANT_FRAMES` demo frames, which keeps
    the compositing tier's loading fast.
    """
    demo_dir = demo_data.avatar_dir
    frames = first_frames(demo_dir, tmp_path_factory.mktemp("variant-frames"))
    rects = json.loads((demo_dir / "crop_rects.json").read_text())[:VARIANT_FRAMES]
    options = {
        "reference-rgb": {"channel_order": "rgb"},
        "reference-linear": {"face_interpolation": "linear"},
        "reference-reflect": {"mel_pad_mode": "reflect"},
    }
    packages = {}
    for avatar_id, spec_options in options.items():
        packages[avatar_id] = build_avatar(
            demo_data.avatars_dir,
            avatar_id,
            backgrounds=frames,
            crop_rects=np.array(rects),
            unet=demo_dir / "unet.onnx",
            overwrite=True,
            **spec_options,
        )
    return packages


@pytest.fixture(scope="module")
def references(demo_data, speech_slice):
    """Return a function that renders the reference once per package and variant."""
    samples, _ = speech_slice
    cache: dict[tuple[Path, Variant], tuple[list[int], list[np.ndarray]]] = {}

    def render(package: Path, variant: Variant) -> tuple[list[int], list[np.ndarray]]:
        if (package, variant) not in cache:
            cache[package, variant] = reference_render(
                package, demo_data.audio_encoder, samples, START_FRAME, variant
            )
        return cache[package, variant]

    return render


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_inference_328_loop_is_pingpong_from_position_1():
    # inference_328.py steps img_idx before reading a frame: it turns at len_img - 1 and at 0,
    # with len_img = N - 1, so its first frame is image 1. That is start_frame_idx 1 here.
    n = 5
    len_img = n - 1
    img_idx, step_stride, visited = 0, 0, []
    for _ in range(20):
        if img_idx > len_img - 1:
            step_stride = -1
        if img_idx < 1:
            step_stride = 1
        img_idx += step_stride
        visited.append(img_idx)
    assert visited == pingpong(1, 20, n)


def test_demo_avatar_equals_reference(client, demo_data, speech_slice, references):
    _, audio = speech_slice
    expected_backgrounds, expected = references(demo_data.avatar_dir, Variant())
    backgrounds, frames = service_render(client, "demo", audio, START_FRAME)

    assert len(frames) == 39  # K + 2 for 25600 samples: 129 mel rows, K = 37
    assert backgrounds == expected_backgrounds
    # The loop reaches the last background and turns back inside the utterance.
    assert 124 in backgrounds
    assert backgrounds[-1] < 124
    differences = frame_differences(frames, expected)
    print(f"demo avatar: max abs pixel difference per frame {differences.tolist()}")
    assert differences.max() <= TOLERANCE


@pytest.mark.parametrize(
    "avatar_id, variant",
    [
        ("reference-rgb", Variant(channel_order="rgb")),
        ("reference-linear", Variant(interpolation=cv2.INTER_LINEAR)),
        ("reference-reflect", Variant(mel_pad_mode="reflect")),
    ],
)
def test_variant_avatar_equals_reference(
    client, variant_avatars, speech_slice, references, avatar_id, variant
):
    _, audio = speech_slice
    expected_backgrounds, expected = references(variant_avatars[avatar_id], variant)
    backgrounds, frames = service_render(client, avatar_id, audio, START_FRAME)

    assert backgrounds == expected_backgrounds
    differences = frame_differences(frames, expected)
    print(f"{avatar_id}: max abs pixel difference {differences.max()}")
    assert differences.max() <= TOLERANCE


def test_reference_catches_swapped_channel_order(variant_avatars, references):
    # The demo UNet copies the face channel by channel and paints the mouth in fixed BGR
    # colours, so the wrong channel order shows as a different mouth colour in speech frames.
    package = variant_avatars["reference-rgb"]
    _, rgb = references(package, Variant(channel_order="rgb"))
    _, bgr = references(package, Variant(channel_order="bgr"))

    differences = frame_differences(rgb, bgr)
    print(f"rgb against bgr reference: max per frame {differences.tolist()}")
    assert differences.max() >= 20
    assert np.count_nonzero(differences > TOLERANCE) >= 10


def test_reference_catches_wrong_interpolation(variant_avatars, references):
    package = variant_avatars["reference-linear"]
    _, linear = references(package, Variant(interpolation=cv2.INTER_LINEAR))
    _, cubic = references(package, Variant(interpolation=cv2.INTER_CUBIC))

    assert frame_differences(linear, cubic).min() > TOLERANCE


def test_reference_catches_wrong_mel_padding(variant_avatars, references):
    # The padding changes only the mel rows near both ends of the audio, so only the frames
    # whose audio context reaches those rows can differ.
    package = variant_avatars["reference-reflect"]
    _, reflect = references(package, Variant(mel_pad_mode="reflect"))
    _, constant = references(package, Variant(mel_pad_mode="constant"))

    changed = np.nonzero(frame_differences(reflect, constant) > TOLERANCE)[0]
    print(f"frames that differ between reflect and constant padding: {changed.tolist()}")
    assert changed.size > 0
