"""Bad requests to either tier get a clear status, and the services keep serving afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

SPEECH = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220) * 0.3).astype("<f4").tobytes()


@pytest.fixture(scope="module")
def compositing(split_deployment):
    with grpc.insecure_channel(split_deployment.compositing.address) as channel:
        yield compositing_pb2_grpc.CompositingServiceStub(channel)


@pytest.fixture(scope="module")
def inference(split_deployment):
    # A batch of 24 uint8 crops is 7.4 MB, over gRPC's default 4 MB receive limit.
    options = channel_options(64 * 1024 * 1024)
    with grpc.insecure_channel(split_deployment.inference.address, options=options) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def render_error(stub, **fields) -> grpc.RpcError:
    request = compositing_pb2.RenderUtteranceRequest(**fields)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.RenderUtterance(request, timeout=30))
    return caught.value


def mouths_error(stub, **fields) -> grpc.RpcError:
    request = inference_pb2.RenderMouthsRequest(**fields)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.RenderMouths(request, timeout=30))
    return caught.value


COMPOSITING_CASES = [
    ("unknown avatar", dict(model_id="nobody", raw_audio=SPEECH), "NOT_FOUND", "nobody"),
    ("empty audio", dict(model_id="demo"), "INVALID_ARGUMENT", "raw_audio"),
    (
        "odd byte count for s16",
        dict(model_id="demo", raw_audio=b"\x00" * 3001, audio_encoding=compositing_pb2.PCM_S16LE),
        "INVALID_ARGUMENT",
        "3001",
    ),
    (
        "float bytes not a multiple of 4",
        dict(model_id="demo", raw_audio=SPEECH + b"\x00"),
        "INVALID_ARGUMENT",
        "raw_audio",
    ),
    (
        "path in avatar id",
        dict(model_id="../demo", raw_audio=SPEECH),
        "INVALID_ARGUMENT",
        "model_id",
    ),
    ("empty avatar id", dict(raw_audio=SPEECH), "INVALID_ARGUMENT", "model_id"),
    (
        "sample rate too high",
        dict(model_id="demo", raw_audio=SPEECH, sample_rate=1_000_000),
        "INVALID_ARGUMENT",
        "sample_rate",
    ),
    (
        "unknown output format",
        dict(model_id="demo", raw_audio=SPEECH, output_format=9),
        "INVALID_ARGUMENT",
        "output_format",
    ),
    (
        "jpeg quality over 100",
        dict(model_id="demo", raw_audio=SPEECH, jpeg_quality=101),
        "INVALID_ARGUMENT",
        "jpeg_quality",
    ),
    (
        "negative start frame",
        dict(model_id="demo", raw_audio=SPEECH, start_frame_idx=-1),
        "INVALID_ARGUMENT",
        "start_frame_idx",
    ),
    (
        "three channels",
        dict(model_id="demo", raw_audio=SPEECH, audio_channels=3),
        "INVALID_ARGUMENT",
        "audio_channels",
    ),
]


@pytest.mark.parametrize(
    "fields, code, words", [c[1:] for c in COMPOSITING_CASES], ids=[c[0] for c in COMPOSITING_CASES]
)
def test_compositing_rejects(compositing, fields, code, words):
    error = render_error(compositing, **fields)
    assert error.code().name == code
    assert words in error.details()
    assert "Traceback" not in error.details()


@pytest.mark.parametrize("batch_size", [0, -1, 100_000])
def test_batch_size_out_of_range(compositing, batch_size):
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=SPEECH, batch_size=batch_size
    )
    with pytest.raises(grpc.RpcError) as caught:
        compositing.InferBatchComposite(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_size" in caught.value.details()
    assert str(batch_size) in caught.value.details()


INFERENCE_CASES = [
    ("unknown avatar", dict(model_id="nobody", raw_audio=SPEECH), "NOT_FOUND", "nobody"),
    ("empty audio", dict(model_id="demo"), "INVALID_ARGUMENT", "raw_audio"),
    (
        "odd byte count for s16",
        dict(model_id="demo", raw_audio=b"\x00" * 3001, audio_encoding=inference_pb2.PCM_S16LE),
        "INVALID_ARGUMENT",
        "3001",
    ),
    (
        "path in avatar id",
        dict(model_id="a/../../etc", raw_audio=SPEECH),
        "INVALID_ARGUMENT",
        "model_id",
    ),
    (
        "frames past the end",
        dict(model_id="demo", raw_audio=SPEECH, first_frame=1000),
        "INVALID_ARGUMENT",
        "1000",
    ),
    (
        "unknown encoding",
        dict(model_id="demo", raw_audio=SPEECH, audio_encoding=7),
        "INVALID_ARGUMENT",
        "audio_encoding",
    ),
]


@pytest.mark.parametrize(
    "fields, code, words", [c[1:] for c in INFERENCE_CASES], ids=[c[0] for c in INFERENCE_CASES]
)
def test_inference_rejects(inference, fields, code, words):
    error = mouths_error(inference, **fields)
    assert error.code().name == code
    assert words in error.details()


def test_services_keep_serving_after_bad_requests(compositing, inference):
    for _ in range(3):
        render_error(compositing, model_id="demo")
        mouths_error(inference, model_id="nobody", raw_audio=SPEECH)

    frames = [
        f
        for r in compositing.RenderUtterance(
            compositing_pb2.RenderUtteranceRequest(model_id="demo", raw_audio=SPEECH), timeout=60
        )
        for f in r.frames
    ]
    assert len(frames) == 24
    crops = [
        c
        for r in inference.RenderMouths(
            inference_pb2.RenderMouthsRequest(model_id="demo", raw_audio=SPEECH), timeout=60
        )
        for c in r.crops
    ]
    assert len(crops) == 24
    assert all(len(c.pixels) == 320 * 320 * 3 for c in crops)
