"""A corpus of malformed requests sent to both tiers of the split deployment over real channels.

Each case gets its documented status code and a message that names the field, never a stack
trace, and afterwards both tiers still serve a valid request. The table covers every field of the
public calls (RenderUtterance, InferBatchComposite, StreamRender, the management calls) and of
the inference tier's RenderMouths, StreamMouths, LoadModel and DescribeAvatar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

TIMEOUT_S = 60
INT32_MAX = 2**31 - 1
FACE_FRAME_BYTES = 6 * 320 * 320 * 4
AUDIO_TENSOR_BYTES = 32 * 16 * 16 * 4


def float_audio(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype("<f4").tobytes()


SPEECH = float_audio(1.0)


def with_values(audio: bytes, index: int, value: float) -> bytes:
    """Return float32 audio with the sample at index replaced by value."""
    samples = np.frombuffer(audio, "<f4").copy()
    samples[index] = value
    return samples.tobytes()


class Stubs:
    """Both tiers' stubs, with one helper per call that consumes a whole response stream."""

    def __init__(self, public: grpc.Channel, internal: grpc.Channel) -> None:
        self.public = compositing_pb2_grpc.CompositingServiceStub(public)
        self.internal = inference_pb2_grpc.InferenceServiceStub(internal)

    def render(self, **fields) -> list[compositing_pb2.Frame]:
        request = compositing_pb2.RenderUtteranceRequest(**fields)
        return [
            f for r in self.public.RenderUtterance(request, timeout=TIMEOUT_S) for f in r.frames
        ]

    def batch(self, **fields) -> compositing_pb2.CompositeBatchResponse:
        request = compositing_pb2.CompositeBatchRequest(**fields)
        return self.public.InferBatchComposite(request, timeout=TIMEOUT_S)

    def stream(self, *messages: compositing_pb2.StreamRenderRequest) -> list:
        responses = self.public.StreamRender(iter(messages), timeout=TIMEOUT_S)
        return [frame for response in responses for frame in response.frames]

    def load(self, model_id: str) -> compositing_pb2.LoadModelResponse:
        request = compositing_pb2.LoadModelRequest(model_id=model_id)
        return self.public.LoadModel(request, timeout=TIMEOUT_S)

    def unload(self, model_id: str) -> compositing_pb2.UnloadModelResponse:
        request = compositing_pb2.UnloadModelRequest(model_id=model_id)
        return self.public.UnloadModel(request, timeout=TIMEOUT_S)

    def stats(self, model_id: str) -> compositing_pb2.GetModelStatsResponse:
        request = compositing_pb2.GetModelStatsRequest(model_id=model_id)
        return self.public.GetModelStats(request, timeout=TIMEOUT_S)

    def mouths(self, **fields) -> list[inference_pb2.MouthCrop]:
        request = inference_pb2.RenderMouthsRequest(**fields)
        responses = self.internal.RenderMouths(request, timeout=TIMEOUT_S)
        return [crop for response in responses for crop in response.crops]

    def stream_mouths(self, *messages: inference_pb2.StreamMouthsRequest) -> list:
        responses = self.internal.StreamMouths(iter(messages), timeout=TIMEOUT_S)
        return [crop for response in responses for crop in response.crops]

    def load_internal(self, model_id: str) -> inference_pb2.LoadModelResponse:
        request = inference_pb2.LoadModelRequest(model_id=model_id)
        return self.internal.LoadModel(request, timeout=TIMEOUT_S)

    def describe(self, model_id: str) -> inference_pb2.DescribeAvatarResponse:
        request = inference_pb2.DescribeAvatarRequest(model_id=model_id)
        return self.internal.DescribeAvatar(request, timeout=TIMEOUT_S)


def config(**fields) -> compositing_pb2.StreamRenderRequest:
    fields = {"model_id": "demo", "sample_rate": 16000, **fields}
    return compositing_pb2.StreamRenderRequest(config=compositing_pb2.StreamConfig(**fields))


def audio(data: bytes = SPEECH) -> compositing_pb2.StreamRenderRequest:
    return compositing_pb2.StreamRenderRequest(audio=compositing_pb2.AudioChunk(data=data))


def interrupt() -> compositing_pb2.StreamRenderRequest:
    return compositing_pb2.StreamRenderRequest(interrupt=compositing_pb2.Interrupt())


def start(**fields) -> inference_pb2.StreamMouthsRequest:
    fields = {"model_id": "demo", "sample_rate": 16000, **fields}
    return inference_pb2.StreamMouthsRequest(start=inference_pb2.StreamStart(**fields))


def internal_audio(data: bytes = SPEECH) -> inference_pb2.StreamMouthsRequest:
    return inference_pb2.StreamMouthsRequest(audio=inference_pb2.StreamAudio(data=data))


def internal_interrupt() -> inference_pb2.StreamMouthsRequest:
    return inference_pb2.StreamMouthsRequest(interrupt=inference_pb2.StreamInterrupt())


@dataclass(frozen=True)
class Case:
    """One malformed request: the call that sends it, and the status and words expected."""

    name: str
    send: Callable[[Stubs], object]
    code: str
    words: str


def render_case(name: str, code: str, words: str, **fields) -> Case:
    fields = {"model_id": "demo", "raw_audio": SPEECH, **fields}
    return Case(f"RenderUtterance {name}", lambda s: s.render(**fields), code, words)


def batch_case(name: str, code: str, words: str, **fields) -> Case:
    fields = {"model_id": "demo", "raw_audio": SPEECH, "batch_size": 4, **fields}
    return Case(f"InferBatchComposite {name}", lambda s: s.batch(**fields), code, words)


def mouths_case(name: str, code: str, words: str, **fields) -> Case:
    fields = {"model_id": "demo", "raw_audio": SPEECH, **fields}
    return Case(f"RenderMouths {name}", lambda s: s.mouths(**fields), code, words)


INVALID = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"

CASES = [
    # Avatar ids: unknown, empty, too long, and every way to name a path.
    render_case("unknown avatar", NOT_FOUND, "nobody", model_id="nobody"),
    render_case("empty avatar id", INVALID, "model_id", model_id=""),
    render_case("parent directory id", INVALID, "model_id", model_id=".."),
    render_case("id with ../", INVALID, "model_id", model_id="../demo"),
    render_case("id with a slash", INVALID, "model_id", model_id="demo/frames"),
    render_case("absolute path id", INVALID, "model_id", model_id="/etc/passwd"),
    render_case("id with a backslash", INVALID, "model_id", model_id="..\\demo"),
    render_case("id with a NUL byte", INVALID, "model_id", model_id="demo\x00"),
    render_case("id of 65 characters", INVALID, "model_id", model_id="a" * 65),
    # Audio: empty, truncated, too short, not finite, too long, wrong layout.
    render_case("empty audio", INVALID, "raw_audio", raw_audio=b""),
    render_case("float32 audio cut mid-sample", INVALID, "raw_audio", raw_audio=SPEECH[:-1]),
    render_case(
        "s16 audio of odd length",
        INVALID,
        "raw_audio",
        raw_audio=SPEECH[:3001],
        audio_encoding=compositing_pb2.PCM_S16LE,
    ),
    render_case("audio shorter than one window", INVALID, "raw_audio", raw_audio=SPEECH[:400]),
    render_case("NaN sample", INVALID, "NaN", raw_audio=with_values(SPEECH, 10, np.nan)),
    render_case("Inf sample", INVALID, "Inf", raw_audio=with_values(SPEECH, 10, np.inf)),
    render_case(
        "samples that overflow resampling",
        INVALID,
        "raw_audio",
        raw_audio=(np.full(44100, 3e38, dtype="<f4")).tobytes(),
        sample_rate=44100,
    ),
    render_case("audio over 300 s", INVALID, "300 s", raw_audio=bytes(301 * 16000 * 4)),
    render_case(
        "stereo audio with an odd sample count",
        INVALID,
        "audio_channels",
        raw_audio=SPEECH[:-4],
        audio_channels=2,
    ),
    render_case("three channels", INVALID, "audio_channels", audio_channels=3),
    render_case("negative channels", INVALID, "audio_channels", audio_channels=-1),
    render_case("negative sample rate", INVALID, "sample_rate", sample_rate=-16000),
    render_case("sample rate below 8 kHz", INVALID, "sample_rate", sample_rate=7999),
    render_case("sample rate of 2^31-1", INVALID, "sample_rate", sample_rate=INT32_MAX),
    # Enums and ranges.
    render_case("unknown audio encoding", INVALID, "audio_encoding", audio_encoding=99),
    render_case("unknown output format", INVALID, "output_format", output_format=7),
    render_case("negative JPEG quality", INVALID, "jpeg_quality", jpeg_quality=-1),
    render_case("JPEG quality 101", INVALID, "jpeg_quality", jpeg_quality=101),
    render_case("negative start frame", INVALID, "start_frame_idx", start_frame_idx=-1),
    # The legacy unary call's own fields.
    batch_case("batch size 0", INVALID, "batch_size", batch_size=0),
    batch_case("negative batch size", INVALID, "batch_size", batch_size=-5),
    batch_case("batch size 2^31-1", INVALID, "batch_size", batch_size=INT32_MAX),
    batch_case(
        "face inputs of the wrong size", INVALID, "visual_frames", visual_frames=bytes(1000)
    ),
    batch_case(
        "NaN face inputs",
        INVALID,
        "visual_frames",
        batch_size=1,
        visual_frames=np.full(FACE_FRAME_BYTES // 4, np.nan, dtype="<f4").tobytes(),
    ),
    batch_case("audio tensor cut mid-float", INVALID, "audio_features", audio_features=bytes(1001)),
    batch_case(
        "audio tensor of the wrong shape", INVALID, "audio_features", audio_features=bytes(400)
    ),
    batch_case(
        "NaN audio tensor",
        INVALID,
        "audio_features",
        audio_features=np.full(AUDIO_TENSOR_BYTES // 4, np.nan, dtype="<f4").tobytes(),
    ),
    # Streams: messages out of order and bad configs.
    Case("StreamRender audio before config", lambda s: s.stream(audio()), INVALID, "config"),
    Case(
        "StreamRender interrupt before config",
        lambda s: s.stream(interrupt(), config()),
        INVALID,
        "config",
    ),
    Case(
        "StreamRender config sent twice",
        lambda s: s.stream(config(), audio(), config()),
        INVALID,
        "config",
    ),
    Case(
        "StreamRender empty message",
        lambda s: s.stream(compositing_pb2.StreamRenderRequest()),
        INVALID,
        "config",
    ),
    Case("StreamRender no messages", lambda s: s.stream(), INVALID, "config"),
    Case(
        "StreamRender unknown avatar",
        lambda s: s.stream(config(model_id="nobody"), audio()),
        NOT_FOUND,
        "nobody",
    ),
    Case(
        "StreamRender avatar id with ../",
        lambda s: s.stream(config(model_id="../demo"), audio()),
        INVALID,
        "model_id",
    ),
    Case(
        "StreamRender lookahead 9",
        lambda s: s.stream(config(lookahead_rows=9), audio()),
        INVALID,
        "lookahead_rows",
    ),
    Case(
        "StreamRender NaN audio",
        lambda s: s.stream(config(), audio(with_values(SPEECH, 5, np.nan))),
        INVALID,
        "NaN",
    ),
    # Management calls of the public API.
    Case("LoadModel path id", lambda s: s.load("../../etc"), INVALID, "model_id"),
    Case("LoadModel unknown avatar", lambda s: s.load("nobody"), NOT_FOUND, "nobody"),
    Case("UnloadModel empty id", lambda s: s.unload(""), INVALID, "model_id"),
    Case("GetModelStats path id", lambda s: s.stats("a/b"), INVALID, "model_id"),
    # The inference tier's own calls and fields.
    mouths_case("unknown avatar", NOT_FOUND, "nobody", model_id="nobody"),
    mouths_case("negative first frame", INVALID, "first_frame", first_frame=-1),
    mouths_case("first frame 2^31-1", INVALID, "first_frame", first_frame=INT32_MAX),
    mouths_case("frame count 2^31-1", INVALID, "frame_count", frame_count=INT32_MAX),
    mouths_case("pad to 2^31-1 frames", INVALID, "pad_to_frames", pad_to_frames=INT32_MAX),
    mouths_case("frames past the end", INVALID, "frames", first_frame=20, frame_count=10),
    mouths_case("unknown audio encoding", INVALID, "audio_encoding", audio_encoding=5),
    mouths_case("negative start frame", INVALID, "start_frame_idx", start_frame_idx=-3),
    mouths_case(
        "face inputs without a frame count", INVALID, "face_inputs", face_inputs=bytes(1000)
    ),
    mouths_case(
        "audio tensor without a frame count",
        INVALID,
        "frame_count",
        audio_features=bytes(AUDIO_TENSOR_BYTES),
    ),
    Case(
        "StreamMouths audio before start",
        lambda s: s.stream_mouths(internal_audio()),
        INVALID,
        "start",
    ),
    Case(
        "StreamMouths start sent twice",
        lambda s: s.stream_mouths(start(), internal_audio(), start()),
        INVALID,
        "start",
    ),
    Case(
        "StreamMouths interrupt before start",
        lambda s: s.stream_mouths(internal_interrupt()),
        INVALID,
        "start",
    ),
    Case(
        "StreamMouths unknown avatar",
        lambda s: s.stream_mouths(start(model_id="nobody"), internal_audio()),
        NOT_FOUND,
        "nobody",
    ),
    Case("LoadModel (inference) path id", lambda s: s.load_internal(".."), INVALID, "model_id"),
    Case(
        "LoadModel (inference) unknown avatar",
        lambda s: s.load_internal("nobody"),
        NOT_FOUND,
        "nobody",
    ),
    Case("DescribeAvatar empty id", lambda s: s.describe(""), INVALID, "model_id"),
    Case("DescribeAvatar slash id", lambda s: s.describe("demo/x"), INVALID, "model_id"),
]


@pytest.fixture(scope="module")
def stubs(split_deployment) -> Iterator[Stubs]:
    options = channel_options(64 * 1024 * 1024)
    with (
        grpc.insecure_channel(split_deployment.compositing.address, options=options) as public,
        grpc.insecure_channel(split_deployment.inference.address, options=options) as internal,
    ):
        yield Stubs(public, internal)


def test_corpus_has_thirty_cases():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_request_rejected(stubs, case):
    with pytest.raises(grpc.RpcError) as caught:
        case.send(stubs)
    error = caught.value
    assert error.code().name == case.code, error.details()
    assert case.words in error.details()
    assert "Traceback" not in error.details()
    assert "internal error" not in error.details()


@pytest.fixture
def outside_link(split_deployment, tmp_path) -> Iterator[str]:
    """A symlink in the avatars folder to a complete avatar package outside it."""
    avatars_dir = split_deployment.demo.avatars_dir
    outside = tmp_path / "escaped"
    outside.mkdir()
    for entry in split_deployment.demo.avatar_dir.iterdir():
        os.symlink(entry, outside / entry.name)
    spec = (split_deployment.demo.avatar_dir / "avatar.yaml").read_text()
    (outside / "avatar.yaml").unlink()
    (outside / "avatar.yaml").write_text(spec.replace("id: demo", "id: escaped"))
    link = avatars_dir / "escaped"
    os.symlink(outside, link, target_is_directory=True)
    try:
        yield link.name
    finally:
        link.unlink()


@pytest.mark.parametrize("call", ["render", "load", "mouths", "load_internal"])
def test_symlink_out_of_avatars_dir_not_followed(stubs, outside_link, call):
    with pytest.raises(grpc.RpcError) as caught:
        if call == "render":
            stubs.render(model_id=outside_link, raw_audio=SPEECH)
        elif call == "mouths":
            stubs.mouths(model_id=outside_link, raw_audio=SPEECH)
        else:
            getattr(stubs, call)(outside_link)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert outside_link in caught.value.details()
    assert "avatars" in caught.value.details()


def test_absurd_but_valid_start_frame(stubs):
    frames = stubs.render(model_id="demo", raw_audio=SPEECH, start_frame_idx=INT32_MAX)
    assert [frame.index for frame in frames] == list(range(24))
    assert all(0 <= frame.background_index < 125 for frame in frames)


def test_both_tiers_serve_after_the_corpus(stubs, split_deployment):
    for case in CASES:
        with pytest.raises(grpc.RpcError):
            case.send(stubs)

    assert split_deployment.inference.process.poll() is None
    assert split_deployment.compositing.process.poll() is None
    assert len(stubs.render(model_id="demo", raw_audio=SPEECH)) == 24
    assert len(stubs.batch(model_id="demo", raw_audio=SPEECH, batch_size=4).composited_frames) == 4
    assert len(stubs.stream(config(), audio())) == 24
    assert len(stubs.mouths(model_id="demo", raw_audio=SPEECH)) == 24
    assert len(stubs.stream_mouths(start(), internal_audio())) == 24
    assert stubs.describe("demo").frame_count == 125
