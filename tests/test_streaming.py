"""StreamRender and StreamMouths through both tiers as real processes.

The frames of a stream must equal those RenderUtterance returns for the same audio, byte for
byte, however the audio is chunked.
"""

from __future__ import annotations

import queue
import threading
import time
import wave

import grpc
import numpy as np
import pytest
import soxr

from inference_service.streaming import INTERRUPT_CLOSE_FRAMES, required_samples
from lipsync.cli import main
from lipsync.demo.run import speech_wav
from lipsync.media import read_wav
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options

PNG, JPEG = compositing_pb2.PNG, compositing_pb2.JPEG
S16 = compositing_pb2.PCM_S16LE
START_FRAME = 5
POLL_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def compositing(split_deployment):
    options = channel_options(64 * 1024 * 1024)
    with grpc.insecure_channel(split_deployment.compositing.address, options=options) as channel:
        yield compositing_pb2_grpc.CompositingServiceStub(channel)


@pytest.fixture(scope="module")
def inference(split_deployment):
    options = channel_options(64 * 1024 * 1024)
    with grpc.insecure_channel(split_deployment.inference.address, options=options) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The bundled speech sample, int16 at 16 kHz."""
    return np.frombuffer(read_wav(speech_wav()).data, dtype="<i2")


def config_message(**fields) -> compositing_pb2.StreamRenderRequest:
    fields.setdefault("model_id", "demo")
    fields.setdefault("audio_encoding", S16)
    fields.setdefault("start_frame_idx", START_FRAME)
    return compositing_pb2.StreamRenderRequest(config=compositing_pb2.StreamConfig(**fields))


def audio_message(data: bytes) -> compositing_pb2.StreamRenderRequest:
    return compositing_pb2.StreamRenderRequest(audio=compositing_pb2.AudioChunk(data=data))


def split_bytes(data: bytes, sizes) -> list[bytes]:
    chunks, offset = [], 0
    for size in sizes:
        if offset >= len(data):
            break
        chunks.append(data[offset : offset + size])
        offset += size
    if offset < len(data):
        chunks.append(data[offset:])
    return chunks


def stream_frames(stub, chunks, **config) -> list[compositing_pb2.Frame]:
    requests = [config_message(**config), *(audio_message(c) for c in chunks)]
    frames, session_ids = [], set()
    for response in stub.StreamRender(iter(requests), timeout=120):
        frames.extend(response.frames)
        session_ids.add(response.session_id)
    assert len(session_ids) == 1
    return frames


def render_frames(stub, data: bytes, **fields) -> list[compositing_pb2.Frame]:
    fields.setdefault("model_id", "demo")
    fields.setdefault("audio_encoding", S16)
    fields.setdefault("start_frame_idx", START_FRAME)
    request = compositing_pb2.RenderUtteranceRequest(raw_audio=data, **fields)
    return [f for r in stub.RenderUtterance(request, timeout=120) for f in r.frames]


def assert_same_frames(streamed, rendered) -> None:
    assert [f.index for f in streamed] == [f.index for f in rendered]
    assert [f.pts_ms for f in streamed] == [40 * f.index for f in rendered]
    assert [f.background_index for f in streamed] == [f.background_index for f in rendered]
    different = [s.index for s, r in zip(streamed, rendered, strict=True) if s.image != r.image]
    assert different == []
    assert not any(f.silence_fill for f in streamed)


def random_sizes(seed: int, low: int, high: int, count: int = 100_000) -> list[int]:
    return np.random.default_rng(seed).integers(low, high + 1, size=count).tolist()


# Chunkings of a 1.5 s slice: (seed, smallest, largest chunk in bytes). Odd sizes split 16-bit
# samples across messages.
CHUNKINGS = {
    "one chunk": None,
    "odd sizes up to 1 kB": (1, 1, 1001),
    "random up to 20 kB": (2, 2, 20000),
}


@pytest.mark.parametrize("output_format", [PNG, JPEG], ids=["png", "jpeg"])
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_stream_equals_render_utterance(compositing, speech, output_format, chunking):
    data = speech[32000:56000].tobytes()
    rendered = render_frames(compositing, data, output_format=output_format)

    sizes = CHUNKINGS[chunking]
    chunks = [data] if sizes is None else split_bytes(data, random_sizes(*sizes))
    streamed = stream_frames(compositing, chunks, output_format=output_format)

    assert_same_frames(streamed, rendered)


def test_one_sample_chunks_equal_render_utterance(compositing, speech):
    data = speech[40000:44000].tobytes()  # 250 ms in 4000 messages of one sample
    rendered = render_frames(compositing, data, output_format=PNG)

    streamed = stream_frames(compositing, split_bytes(data, [2] * 4000), output_format=PNG)

    assert_same_frames(streamed, rendered)


def test_stereo_44k_stream_equals_render_utterance(compositing, speech):
    mono = speech[32000:52000].astype(np.float32) / 32768.0
    left = soxr.resample(mono, 16000, 44100)
    stereo = np.stack([left, np.roll(left, 11) * 0.7], axis=1)
    data = np.clip(stereo * 32768.0, -32768, 32767).astype("<i2").tobytes()
    fields = dict(sample_rate=44100, audio_channels=2, output_format=PNG)
    rendered = render_frames(compositing, data, **fields)

    streamed = stream_frames(compositing, split_bytes(data, random_sizes(3, 1, 3000)), **fields)

    assert_same_frames(streamed, rendered)


class ControlledStream:
    """A StreamRender call whose messages the test sends one at a time from a queue."""

    def __init__(self, stub, **config) -> None:
        self._messages: queue.Queue = queue.Queue()
        self._messages.put(config_message(**config))
        self.call = stub.StreamRender(iter(self._messages.get, None), timeout=120)
        self.frames: list[compositing_pb2.Frame] = []

    def send(self, message: compositing_pb2.StreamRenderRequest | None) -> None:
        self._messages.put(message)

    def receive_until(self, count: int) -> None:
        while len(self.frames) < count:
            self.frames.extend(next(self.call).frames)

    def receive_all(self) -> list[compositing_pb2.Frame]:
        for response in self.call:
            self.frames.extend(response.frames)
        return self.frames


def frames_ready(n_samples: int) -> int:
    """Frames of a stream that n_samples at 16 kHz make ready, with the exact context."""
    frame = 0
    while required_samples(frame) <= n_samples:
        frame += 1
    return frame


def test_interleaved_streams_keep_their_own_state(compositing, speech):
    first = speech[20000:44000].tobytes()
    second = speech[60000:84000].tobytes()
    expected_first = render_frames(compositing, first, output_format=PNG)
    expected_second = render_frames(compositing, second, output_format=PNG, start_frame_idx=60)

    a = ControlledStream(compositing, output_format=PNG)
    b = ControlledStream(compositing, output_format=PNG, start_frame_idx=60)
    chunk = 2 * 1600  # 100 ms
    for offset in range(0, len(first), chunk):
        a.send(audio_message(first[offset : offset + chunk]))
        b.send(audio_message(second[offset : offset + chunk]))
        # Both sessions hold open state here: their frames so far must have arrived.
        a.receive_until(frames_ready((offset + chunk) // 2))
        b.receive_until(frames_ready((offset + chunk) // 2))
    a.send(None)
    b.send(None)

    assert_same_frames(a.receive_all(), expected_first)
    assert_same_frames(b.receive_all(), expected_second)


def active_streams(compositing, inference) -> tuple[int, int]:
    public = compositing.GetModelStats(compositing_pb2.GetModelStatsRequest(), timeout=10)
    internal = inference.GetModelStats(inference_pb2.GetModelStatsRequest(), timeout=10)
    return public.active_streams, internal.active_streams


def wait_for_streams(compositing, inference, expected: tuple[int, int]) -> tuple[int, int]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    counts = active_streams(compositing, inference)
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = active_streams(compositing, inference)
    return counts


def test_cancelled_stream_leaves_no_session(compositing, inference, speech):
    assert wait_for_streams(compositing, inference, (0, 0)) == (0, 0)
    stream = ControlledStream(compositing)
    stream.send(audio_message(speech[32000:48000].tobytes()))
    stream.receive_until(1)
    assert active_streams(compositing, inference) == (1, 1)

    stream.call.cancel()

    assert wait_for_streams(compositing, inference, (0, 0)) == (0, 0)


def test_client_that_stops_reading_is_held_back(compositing, inference, speech):
    # The client sends 3 s of audio at once and reads nothing for a while: flow control and the
    # bounded queues hold the frames back, and every frame still arrives in order afterwards.
    data = speech[:48000].tobytes()
    stream = ControlledStream(compositing)
    for offset in range(0, len(data), 3200):
        stream.send(audio_message(data[offset : offset + 3200]))
    stream.send(None)
    time.sleep(1.0)

    frames = stream.receive_all()

    assert [f.index for f in frames] == list(range(len(frames)))
    assert len(frames) == len(render_frames(compositing, data))


def test_pause_in_speech_gives_closed_mouth(compositing, speech):
    # Audio from 2.0 s to 4.0 s; the speech sample is silent from 2.68 s to 3.28 s.
    data = speech[32000:64000].tobytes()
    silence = bytes(len(data))
    streamed = stream_frames(compositing, split_bytes(data, random_sizes(4, 500, 4000)))
    silent = render_frames(compositing, silence)

    # A frame whose image equals the silent render's has a closed mouth.
    closed = [s.index for s, q in zip(streamed, silent, strict=True) if s.image == q.image]

    # The demo mouth follows the audio 80 ms before to 170 ms after a frame's time, so frames
    # 19-28 (2.76-3.12 s) lie wholly in the pause. Loud speech is near on both sides.
    assert set(range(19, 29)) <= set(closed)
    assert closed == list(range(closed[0], closed[-1] + 1))
    assert closed[0] >= 14
    assert closed[-1] <= 36


def test_interrupt_closes_mouth_within_bound(compositing, speech):
    data = speech[32000:44000].tobytes()  # 0.75 s of loud speech
    stream = ControlledStream(compositing, output_format=PNG)
    stream.send(audio_message(data))
    cut_frame = frames_ready(len(data) // 2)
    stream.receive_until(cut_frame)

    stream.send(compositing_pb2.StreamRenderRequest(interrupt=compositing_pb2.Interrupt()))
    stream.send(None)
    frames = stream.receive_all()

    # The inference tier had sent every ready frame, so it cut the audio at cut_frame and
    # appended the silence that renders frames up to cut_frame + 10.
    timeline = required_samples(cut_frame + INTERRUPT_CLOSE_FRAMES)
    silent = render_frames(compositing, bytes(2 * timeline), output_format=PNG)
    rendered = render_frames(compositing, data, output_format=PNG)
    assert [f.index for f in frames] == [f.index for f in silent]
    assert [f.image for f in frames[:cut_frame]] == [f.image for f in rendered[:cut_frame]]
    closed_from = cut_frame + INTERRUPT_CLOSE_FRAMES
    assert [f.image for f in frames[closed_from:]] == [f.image for f in silent[closed_from:]]
    assert frames[cut_frame - 1].image != silent[cut_frame - 1].image


def test_paced_stream_fills_a_pause_with_silence(compositing, speech):
    chunk = 2 * 320  # 20 ms
    first = speech[32000:41600].tobytes()  # 0.6 s
    second = speech[41600:51200].tobytes()
    stream = ControlledStream(compositing, paced=True)

    def send_in_real_time(data: bytes) -> None:
        started = time.monotonic()
        for j, offset in enumerate(range(0, len(data), chunk)):
            time.sleep(max(0.0, started + 0.02 * j - time.monotonic()))
            stream.send(audio_message(data[offset : offset + chunk]))

    def client() -> None:
        send_in_real_time(first)
        time.sleep(1.0)  # the pause: no audio for a second
        send_in_real_time(second)
        stream.send(None)

    sender = threading.Thread(target=client)
    sender.start()
    frames = stream.receive_all()
    sender.join()

    filled = [f.index for f in frames if f.silence_fill]
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [f.pts_ms for f in frames] == [40 * f.index for f in frames]
    # About 25 frames of the pause are filled; the real-time audio itself needs no fill.
    assert len(filled) >= 15
    assert filled == list(range(filled[0], filled[-1] + 1))
    assert filled[0] > 5


# --- bad messages ------------------------------------------------------------------------------


def stream_error(stub_method, requests) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub_method(iter(requests), timeout=60):
            pass
    return caught.value


AUDIO = audio_message(b"\x00\x00" * 4000)
INTERRUPT = compositing_pb2.StreamRenderRequest(interrupt=compositing_pb2.Interrupt())

COMPOSITING_CASES = [
    ("audio before config", [AUDIO], "INVALID_ARGUMENT", "must be config"),
    ("interrupt first", [INTERRUPT], "INVALID_ARGUMENT", "must be config"),
    ("empty message", [compositing_pb2.StreamRenderRequest()], "INVALID_ARGUMENT", "empty"),
    ("no message at all", [], "INVALID_ARGUMENT", "before its config"),
    ("config twice", [config_message(), AUDIO, config_message()], "INVALID_ARGUMENT", "twice"),
    ("empty later message", [config_message(), compositing_pb2.StreamRenderRequest()],
     "INVALID_ARGUMENT", "none of config"),
    ("unknown avatar", [config_message(model_id="nobody"), AUDIO], "NOT_FOUND", "nobody"),
    ("bad avatar id", [config_message(model_id="../x"), AUDIO], "INVALID_ARGUMENT", "model_id"),
    ("lookahead 9", [config_message(lookahead_rows=9), AUDIO], "INVALID_ARGUMENT",
     "lookahead_rows 9"),
    ("jpeg quality 101", [config_message(jpeg_quality=101)], "INVALID_ARGUMENT", "jpeg_quality"),
    ("output format 9", [config_message(output_format=9)], "INVALID_ARGUMENT", "output_format"),
    ("negative start frame", [config_message(start_frame_idx=-2)], "INVALID_ARGUMENT",
     "start_frame_idx"),
    ("sample rate 1 MHz", [config_message(sample_rate=1_000_000), AUDIO], "INVALID_ARGUMENT",
     "sample_rate"),
    ("three channels", [config_message(audio_channels=3), AUDIO], "INVALID_ARGUMENT",
     "audio_channels"),
    ("too short", [config_message(), audio_message(b"\x00\x00" * 1000)], "INVALID_ARGUMENT",
     "too short"),
    ("split sample at the end", [config_message(), audio_message(b"\x00" * 8001)],
     "INVALID_ARGUMENT", "whole"),
    ("NaN sample", [config_message(audio_encoding=compositing_pb2.PCM_F32LE),
                    audio_message(np.full(4000, np.nan, "<f4").tobytes())],
     "INVALID_ARGUMENT", "NaN"),
]  # fmt: skip


@pytest.mark.parametrize(
    "requests, code, words",
    [c[1:] for c in COMPOSITING_CASES],
    ids=[c[0] for c in COMPOSITING_CASES],
)
def test_stream_render_rejects(compositing, requests, code, words):
    error = stream_error(compositing.StreamRender, requests)

    assert error.code().name == code
    assert words in error.details()
    assert "Traceback" not in error.details()


def start_message(**fields) -> inference_pb2.StreamMouthsRequest:
    fields.setdefault("model_id", "demo")
    fields.setdefault("audio_encoding", inference_pb2.PCM_S16LE)
    return inference_pb2.StreamMouthsRequest(start=inference_pb2.StreamStart(**fields))


MOUTHS_AUDIO = inference_pb2.StreamMouthsRequest(
    audio=inference_pb2.StreamAudio(data=b"\x00\x00" * 4000)
)

INFERENCE_CASES = [
    ("audio before start", [MOUTHS_AUDIO], "INVALID_ARGUMENT", "must be start"),
    ("empty message", [inference_pb2.StreamMouthsRequest()], "INVALID_ARGUMENT", "empty"),
    ("no message at all", [], "INVALID_ARGUMENT", "before its start"),
    ("start twice", [start_message(), MOUTHS_AUDIO, start_message()], "INVALID_ARGUMENT",
     "twice"),
    ("unknown avatar", [start_message(model_id="nobody")], "NOT_FOUND", "nobody"),
    ("lookahead -1", [start_message(lookahead_rows=-1)], "INVALID_ARGUMENT", "lookahead_rows"),
    ("unknown encoding", [start_message(audio_encoding=7)], "INVALID_ARGUMENT", "audio_encoding"),
]  # fmt: skip


@pytest.mark.parametrize(
    "requests, code, words", [c[1:] for c in INFERENCE_CASES], ids=[c[0] for c in INFERENCE_CASES]
)
def test_stream_mouths_rejects(inference, requests, code, words):
    error = stream_error(inference.StreamMouths, requests)

    assert error.code().name == code
    assert words in error.details()


def test_stream_mouths_returns_session_id_and_flags(inference, speech):
    requests = [
        start_message(),
        inference_pb2.StreamMouthsRequest(
            audio=inference_pb2.StreamAudio(data=speech[32000:40000].tobytes())
        ),
    ]
    responses = list(inference.StreamMouths(iter(requests), timeout=60))

    crops = [c for r in responses for c in r.crops]
    assert len({r.session_id for r in responses}) == 1
    assert len(responses[0].session_id) == 16
    assert [c.frame_index for c in crops] == list(range(len(crops)))
    assert responses[-1].utterance_frames == len(crops)
    assert not any(c.silence_fill for c in crops)


def write_wav(path, samples: np.ndarray, sample_rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def test_cli_stream_saves_frames_and_reports_latency(
    compositing, split_deployment, speech, tmp_path, capsys
):
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech[32000:48000])  # 1 s, sent in real time
    frames_dir = tmp_path / "frames"

    with pytest.raises(SystemExit) as exited:
        main(
            [
                "stream",
                "--audio", str(wav),
                "--avatar", "demo",
                "--server", split_deployment.compositing.address,
                "--chunk-ms", "40",
                "--frames-dir", str(frames_dir),
            ]
        )  # fmt: skip

    assert exited.value.code == 0
    output = capsys.readouterr().out
    saved = sorted(p.name for p in frames_dir.iterdir())
    assert saved == [f"{i:06d}.jpg" for i in range(len(saved))]
    assert len(saved) == len(render_frames(compositing, speech[32000:48000].tobytes()))
    assert f"{len(saved)} frames (0 silence-filled)" in output
    assert "first frame after" in output
    assert "p95" in output
    assert "real-time factor" in output


def test_monolithic_stream_equals_split_render(monolithic_deployment, compositing, speech):
    data = speech[32000:56000].tobytes()
    rendered = render_frames(compositing, data, output_format=JPEG)
    options = channel_options(64 * 1024 * 1024)
    with grpc.insecure_channel(monolithic_deployment.address, options=options) as channel:
        monolithic = compositing_pb2_grpc.CompositingServiceStub(channel)
        chunks = split_bytes(data, random_sizes(3, 1, 5000))
        streamed = stream_frames(monolithic, chunks, output_format=JPEG)
        stats = monolithic.GetModelStats(compositing_pb2.GetModelStatsRequest(), timeout=30)
    assert_same_frames(streamed, rendered)
    assert stats.active_streams == 0
