"""The main job in both deployment shapes as real processes: a speech WAV becomes an MP4.

Every test runs against the split deployment (two processes over gRPC) and the monolithic one.
"""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from lipsync.avatar.spec import background_index
from lipsync.client import LipsyncClient
from lipsync.demo.run import speech_wav
from lipsync.media import read_wav
from lipsync.protos import compositing_pb2

WIDTH, HEIGHT = 1280, 720


def expected_frame_count(n_samples: int) -> int:
    """K + 2 for 16 kHz audio, from the reference's formulas (hop 200, 16-row windows)."""
    mel_rows = 1 + n_samples // 200
    windows = int((mel_rows - 16) / 80.0 * 25.0) + 2
    return windows + 2


@pytest.fixture(scope="module")
def client(public_address):
    client = LipsyncClient(public_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def speech():
    wav = read_wav(speech_wav())
    assert (wav.sample_rate, wav.channels) == (16000, 1)
    return wav


@pytest.fixture(scope="module")
def rendered_frames(client, speech):
    """Every frame of the speech sample, decoded, with the frame messages."""
    frames, images = [], []
    for response in client.render_utterance("demo", speech, start_frame=3):
        assert (response.width, response.height) == (WIDTH, HEIGHT)
        for frame in response.frames:
            frames.append(frame)
            images.append(cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR))
    return frames, images


def test_demo_wav_becomes_mp4_with_k_plus_2_frames(client, speech, tmp_path):
    out = tmp_path / "speech.mp4"
    stats = client.render_to_mp4("demo", speech, out)
    expected = expected_frame_count(speech.frames)
    assert stats.frames == expected

    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        assert video.average_rate == 25
        audio_seconds = float(audio.duration * audio.time_base)
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == expected
    assert abs(audio_seconds - speech.duration_s) < 0.05


def test_frames_arrive_in_order_with_pingpong_backgrounds(rendered_frames, speech, demo_data):
    frames, _ = rendered_frames
    count = expected_frame_count(speech.frames)
    assert [f.index for f in frames] == list(range(count))
    assert [f.pts_ms for f in frames] == [40 * i for i in range(count)]
    spec_frames = len(list((demo_data.avatar_dir / "frames").iterdir()))
    assert [f.background_index for f in frames] == [
        background_index(3 + i, spec_frames) for i in range(count)
    ]


def test_every_jpeg_decodes_at_1280x720(rendered_frames):
    frames, images = rendered_frames
    assert all(f.image[:3] == b"\xff\xd8\xff" for f in frames)
    assert all(image is not None and image.shape == (HEIGHT, WIDTH, 3) for image in images)


def test_mouth_is_darker_in_loud_frames_than_in_silent_ones(rendered_frames, speech, demo_data):
    frames, images = rendered_frames
    boxes = np.array(json.loads((demo_data.avatar_dir / "crop_rects.json").read_text()))
    samples = speech.to_float()[:, 0]

    # Frame i's audio context is centred on mel window i - 1, which spans samples
    # [(i - 1) * 640, (i - 1) * 640 + 3200).
    loudness, darkening = [], []
    for frame, image in zip(frames, images, strict=True):
        start = max(frame.index - 1, 0) * 640
        loudness.append(float(np.sqrt(np.mean(samples[start : start + 3200] ** 2) + 1e-12)))
        background = cv2.imread(
            str(demo_data.avatar_dir / "frames" / f"{frame.background_index:06d}.png")
        )
        x1, y1, x2, y2 = boxes[frame.background_index]
        # The demo mouth sits around the middle of the lower half of the face box.
        w, h = x2 - x1, y2 - y1
        mouth = (
            slice(y1 + int(0.5 * h), y1 + int(0.7 * h)),
            slice(x1 + int(0.3 * w), x1 + int(0.7 * w)),
        )
        darkening.append(float(background[mouth].mean()) - float(image[mouth].mean()))
    loudness, darkening = np.array(loudness), np.array(darkening)

    silent = loudness < 0.01 * loudness.max()
    loud = loudness > np.quantile(loudness, 0.75)
    assert silent.sum() >= 5, "the speech sample should contain silence"
    assert loud.sum() >= 5
    assert darkening[loud].mean() > darkening[silent].mean() + 10.0
    assert abs(darkening[silent]).mean() < 2.0


def test_infer_batch_composite_returns_batch_size_jpegs(client, speech):
    audio = speech.to_float()[:15360, 0].astype("<f4").tobytes()  # 960 ms of float32 mono
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=audio, batch_size=24, start_frame_idx=10
    )
    response = client.stub.InferBatchComposite(request, timeout=60)
    assert response.success
    assert response.error == ""
    assert len(response.composited_frames) == 24
    assert list(response.background_indices) == [background_index(10 + i, 125) for i in range(24)]
    assert response.utterance_frames == 24
    assert response.inference_time_ms > 0
    assert response.composite_time_ms > 0
    assert response.total_time_ms >= response.composite_time_ms
    assert response.gpu_id == -1
    for jpeg in response.composited_frames:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (HEIGHT, WIDTH, 3)


def test_short_audio_is_padded_to_batch_size(client, speech):
    audio = speech.to_float()[:6400, 0].astype("<f4").tobytes()  # 400 ms: fewer than 24 frames
    request = compositing_pb2.CompositeBatchRequest(model_id="demo", raw_audio=audio, batch_size=24)
    response = client.stub.InferBatchComposite(request, timeout=60)
    assert len(response.composited_frames) == 24
    assert response.utterance_frames == 24


def test_split_and_monolithic_frames_are_byte_identical(
    split_deployment, monolithic_deployment, speech
):
    def render(address: str) -> list[bytes]:
        client = LipsyncClient(address)
        try:
            return [
                frame.image
                for response in client.render_utterance("demo", speech, start_frame=5)
                for frame in response.frames
            ]
        finally:
            client.close()

    split = render(split_deployment.compositing.address)
    monolithic = render(monolithic_deployment.address)
    assert len(split) == expected_frame_count(speech.frames)
    assert len(split) == len(monolithic)
    assert all(a == b for a, b in zip(split, monolithic, strict=True))
