"""Audio as clients send it, through the public API of both services and through `lipsync render`.

Each layout either renders frames or gets INVALID_ARGUMENT naming the field and the allowed
values. Audio over gRPC's message limit is rejected by gRPC itself with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import wave
from pathlib import Path

import av
import cv2
import grpc
import numpy as np
import pytest
import soxr
import yaml

from lipsync.client import wait_for_serving
from lipsync.demo.run import free_port, speech_wav, start_service, wait_serving, write_configs
from lipsync.protos import compositing_pb2, compositing_pb2_grpc
from lipsync.serving import channel_options

S16 = compositing_pb2.PCM_S16LE
F32 = compositing_pb2.PCM_F32LE
PNG = compositing_pb2.PNG

# Seconds 2.0-4.0 of the bundled speech: speech, a pause from 2.75 to 3.25 s, then speech.
SLICE_START, SLICE_END = 32000, 64000
# Max abs pixel difference between a 44.1 kHz stereo render and the 16 kHz mono original.
# Measured: 2 on the demo models, in the frames with speech, and 0 in the pause.
RESAMPLER_TOLERANCE = 3
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HOUR_S = 3600


def expected_frames(n_samples_16k: int) -> int:
    """K + 2 for 16 kHz audio: 1 + n // 200 mel rows, 16-row windows at 80 rows per second."""
    mel_rows = 1 + n_samples_16k // 200
    return int((mel_rows - 16) / 80.0 * 25.0) + 2 + 2


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The bundled speech sample: int16 [n] at 16 kHz."""
    with wave.open(str(speech_wav())) as wav:
        assert (wav.getsampwidth(), wav.getframerate(), wav.getnchannels()) == (2, 16000, 1)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


@pytest.fixture(scope="module")
def stub(split_deployment):
    options = channel_options(MAX_MESSAGE_BYTES)
    with grpc.insecure_channel(split_deployment.compositing.address, options=options) as channel:
        yield compositing_pb2_grpc.CompositingServiceStub(channel)


def render(stub, **fields) -> list[compositing_pb2.Frame]:
    request = compositing_pb2.RenderUtteranceRequest(model_id="demo", **fields)
    return [
        frame
        for response in stub.RenderUtterance(request, timeout=120)
        for frame in response.frames
    ]


def render_error(stub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        render(stub, **fields)
    return caught.value


def decode(frames: list[compositing_pb2.Frame]) -> list[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(f.image, np.uint8), cv2.IMREAD_COLOR) for f in frames]


def frame_differences(got: list[np.ndarray], expected: list[np.ndarray]) -> np.ndarray:
    """Return the max abs pixel difference of each frame pair, int [n]."""
    return np.array(
        [
            int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
            for a, b in zip(got, expected, strict=True)
        ]
    )


def to_s16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


# ---------------------------------------------------------------------------------------------
# Resampled stereo against the 16 kHz mono original
# ---------------------------------------------------------------------------------------------


def test_44k_stereo_matches_16k_mono_within_tolerance(stub, speech):
    pcm = speech[SLICE_START:SLICE_END]
    upsampled = soxr.resample(pcm.astype(np.float32) / 32768.0, 16000, 44100, quality="HQ")
    stereo = np.repeat(to_s16(upsampled), 2)

    mono_frames = decode(
        render(stub, raw_audio=pcm.tobytes(), audio_encoding=S16, output_format=PNG)
    )
    stereo_frames = decode(
        render(
            stub,
            raw_audio=stereo.tobytes(),
            audio_encoding=S16,
            audio_channels=2,
            sample_rate=44100,
            output_format=PNG,
        )
    )

    assert len(mono_frames) == expected_frames(pcm.size) == 49
    assert len(stereo_frames) == len(mono_frames)
    differences = frame_differences(stereo_frames, mono_frames)
    print(
        f"44.1 kHz stereo against 16 kHz mono: max abs pixel difference {differences.max()}, "
        f"{np.count_nonzero(differences)} of {differences.size} frames differ"
    )
    assert differences.max() <= RESAMPLER_TOLERANCE
    # The pause renders the closed mouth at both rates.
    assert np.count_nonzero(differences == 0) >= 10


# ---------------------------------------------------------------------------------------------
# Edge cases through the public API
# ---------------------------------------------------------------------------------------------


def f32_with(value: float, n: int = 16000, index: int = 100) -> bytes:
    samples = np.zeros(n, dtype="<f4")
    samples[index] = value
    return samples.tobytes()


# Finite samples at the float32 maximum with alternating signs: soxr's filter overflows on them.
HUGE = (np.float32(3.4e38) * np.resize([1, -1], 44100)).astype("<f4").tobytes()

REJECTED = [
    ("empty audio", dict(raw_audio=b""), ["raw_audio is empty"]),
    (
        "shorter than one mel window at 16 kHz",
        dict(raw_audio=bytes(2 * 2999), audio_encoding=S16),
        ["raw_audio is too short", "3000 samples", "187.5 ms"],
    ),
    (
        "shorter than one mel window at 8 kHz",
        dict(raw_audio=bytes(2 * 1499), audio_encoding=S16, sample_rate=8000),
        ["raw_audio is too short", "3000 samples"],
    ),
    (
        "odd byte count for 16-bit",
        dict(raw_audio=bytes(6001), audio_encoding=S16),
        ["raw_audio has 6001 bytes", "2-byte sample size"],
    ),
    (
        "float byte count not a multiple of 4",
        dict(raw_audio=bytes(64002), audio_encoding=F32),
        ["raw_audio has 64002 bytes", "4-byte sample size"],
    ),
    (
        "float byte count not a multiple of 4 with unset encoding",
        dict(raw_audio=bytes(64001)),
        ["raw_audio has 64001 bytes", "4-byte sample size"],
    ),
    ("NaN sample", dict(raw_audio=f32_with(np.nan)), ["1 NaN or Inf samples", "index 100"]),
    ("Inf sample", dict(raw_audio=f32_with(np.inf, index=7)), ["1 NaN or Inf samples", "index 7"]),
    (
        "finite float that overflows the resampler",
        dict(raw_audio=HUGE, sample_rate=44100),
        ["raw_audio", "too large to resample", "[-1, 1]"],
    ),
    (
        "sample rate 1000000",
        dict(raw_audio=bytes(32000), audio_encoding=S16, sample_rate=1_000_000),
        ["sample_rate is 1000000 Hz", "from 8000 to 48000 Hz"],
    ),
    (
        "sample rate 7999",
        dict(raw_audio=bytes(32000), audio_encoding=S16, sample_rate=7999),
        ["sample_rate is 7999 Hz", "from 8000 to 48000 Hz"],
    ),
    (
        "negative sample rate",
        dict(raw_audio=bytes(32000), audio_encoding=S16, sample_rate=-16000),
        ["sample_rate is -16000 Hz", "from 8000 to 48000 Hz"],
    ),
    (
        "stereo with an odd sample count",
        dict(raw_audio=bytes(2 * 16001), audio_encoding=S16, audio_channels=2),
        ["raw_audio has 16001 samples", "audio_channels is 2"],
    ),
    (
        "three channels",
        dict(raw_audio=bytes(32000), audio_encoding=S16, audio_channels=3),
        ["audio_channels is 3", "1 (mono) or 2"],
    ),
    (
        "unknown encoding",
        dict(raw_audio=bytes(32000), audio_encoding=7),
        ["audio_encoding 7", "PCM_S16LE (1) or PCM_F32LE (2)"],
    ),
]


@pytest.mark.parametrize(
    "fields, words", [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED]
)
def test_bad_audio_rejected(stub, fields, words):
    error = render_error(stub, **fields)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for word in words:
        assert word in error.details()
    assert "Traceback" not in error.details()


@pytest.mark.parametrize(
    "sample_rate, samples",
    [(16000, 3000), (8000, 1500), (44100, 8266)],
    ids=["16 kHz", "8 kHz", "44.1 kHz"],
)
def test_shortest_audio_gives_4_frames(stub, speech, sample_rate, samples):
    # The shortest audio that forms one mel window resamples to 3000 samples at 16 kHz.
    assert math.ceil(samples * 16000 / sample_rate) == 3000
    frames = render(
        stub, raw_audio=speech[:samples].tobytes(), audio_encoding=S16, sample_rate=sample_rate
    )
    assert [f.index for f in frames] == [0, 1, 2, 3]


def test_44k_one_sample_below_shortest_rejected(stub, speech):
    assert math.ceil(8265 * 16000 / 44100) == 2999
    error = render_error(
        stub, raw_audio=speech[:8265].tobytes(), audio_encoding=S16, sample_rate=44100
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_audio is too short" in error.details()


def test_short_audio_padded_by_infer_batch_composite(stub, speech):
    request = compositing_pb2.CompositeBatchRequest(
        model_id="demo", raw_audio=speech[:100].tobytes(), audio_encoding=S16, batch_size=6
    )
    response = stub.InferBatchComposite(request, timeout=60)
    assert len(response.composited_frames) == 6
    assert response.utterance_frames == 6


def test_sample_rate_0_means_16000(stub, speech):
    audio = speech[SLICE_START : SLICE_START + 16000].tobytes()
    unset = render(stub, raw_audio=audio, audio_encoding=S16)
    explicit = render(stub, raw_audio=audio, audio_encoding=S16, sample_rate=16000)

    assert len(unset) == expected_frames(16000) == 24
    assert [f.image for f in unset] == [f.image for f in explicit]


def test_unset_encoding_means_float32(stub, speech):
    samples = speech[SLICE_START : SLICE_START + 16000]
    unset = render(stub, raw_audio=(samples.astype("<f4") / 32768.0).tobytes())
    s16 = render(stub, raw_audio=samples.tobytes(), audio_encoding=S16)
    assert [f.image for f in unset] == [f.image for f in s16]


@pytest.mark.parametrize("sample_rate", [8000, 48000])
def test_mono_at_other_rates_renders(stub, speech, sample_rate):
    second = speech[SLICE_START : SLICE_START + 16000].astype(np.float32) / 32768.0
    resampled = to_s16(soxr.resample(second, 16000, sample_rate, quality="HQ"))
    assert resampled.size == sample_rate

    frames = render(
        stub, raw_audio=resampled.tobytes(), audio_encoding=S16, sample_rate=sample_rate
    )
    assert [f.index for f in frames] == list(range(24))
    images = decode(frames)
    assert all(image.shape == (720, 1280, 3) for image in images)


def test_hour_over_message_limit_rejected_by_grpc(split_deployment):
    # An hour of 16-bit mono silence at 16 kHz is 115.2 MB, over the server's 64 MiB receive
    # limit (server.max_message_bytes). A channel with gRPC's default send limit (none) sends
    # it, and the server's gRPC layer rejects it before any handler runs.
    audio = bytes(2 * 16000 * HOUR_S)
    request = compositing_pb2.RenderUtteranceRequest(
        model_id="demo", raw_audio=audio, audio_encoding=S16
    )
    with grpc.insecure_channel(split_deployment.compositing.address) as channel:
        stub = compositing_pb2_grpc.CompositingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.RenderUtterance(request, timeout=120))

    print(f"hour of 16 kHz audio: {caught.value.code().name}: {caught.value.details()}")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert str(MAX_MESSAGE_BYTES) in caught.value.details()


def test_hour_under_message_limit_rejected_by_duration_limit(stub):
    # At 8 kHz the hour is 57.6 MB, under the message limit, so it reaches the inference tier,
    # whose limits.max_audio_seconds (300 s by default) rejects it.
    audio = bytes(2 * 8000 * HOUR_S)
    assert len(audio) < MAX_MESSAGE_BYTES
    error = render_error(stub, raw_audio=audio, audio_encoding=S16, sample_rate=8000)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_audio is 3600.000 s long" in error.details()
    assert "limit of 300 s (limits.max_audio_seconds)" in error.details()


def test_services_keep_serving_after_bad_audio(stub, speech, split_deployment):
    for _, fields, _ in REJECTED:
        render_error(stub, **fields)

    frames = render(stub, raw_audio=speech[:16000].tobytes(), audio_encoding=S16)
    assert len(frames) == 24
    assert wait_for_serving(split_deployment.compositing.address, timeout_s=5)
    assert wait_for_serving(split_deployment.inference.address, timeout_s=5)


# ---------------------------------------------------------------------------------------------
# A configured duration limit, on a pair of services of its own
# ---------------------------------------------------------------------------------------------

LIMIT_S = 2.0


@pytest.fixture(scope="module")
def limited_stub(demo_data, tmp_path_factory):
    """Both tiers with limits.max_audio_seconds set to `LIMIT_S`."""
    run_dir = tmp_path_factory.mktemp("limited")
    inference_port, compositing_port = free_port(), free_port()
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=demo_data.audio_encoder,
        avatars_dir=demo_data.avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )
    config = yaml.safe_load(inference_config.read_text())
    config["limits"] = {"max_audio_seconds": LIMIT_S}
    inference_config.write_text(yaml.safe_dump(config))

    services = []
    try:
        services.append(
            start_service(
                "inference", inference_config, f"127.0.0.1:{inference_port}", run_dir / "logs"
            )
        )
        wait_serving(services[-1], 120)
        services.append(
            start_service(
                "compositing", compositing_config, f"127.0.0.1:{compositing_port}", run_dir / "logs"
            )
        )
        wait_serving(services[-1], 120)
        with grpc.insecure_channel(services[-1].address) as channel:
            yield compositing_pb2_grpc.CompositingServiceStub(channel)
    finally:
        for service in reversed(services):
            service.stop()


def test_audio_over_configured_limit_rejected(limited_stub, speech):
    over = speech[: int(16000 * LIMIT_S) + 1].tobytes()
    error = render_error(limited_stub, raw_audio=over, audio_encoding=S16)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_audio is 2.000 s long (32001 samples" in error.details()
    assert "limit of 2 s (limits.max_audio_seconds)" in error.details()


def test_audio_at_configured_limit_renders(limited_stub, speech):
    at_limit = speech[: int(16000 * LIMIT_S)]
    frames = render(limited_stub, raw_audio=at_limit.tobytes(), audio_encoding=S16)
    assert len(frames) == expected_frames(at_limit.size)

    # The limit is checked at the request's own rate: 2 s at 8 kHz is as long as 2 s at 16 kHz.
    eight_khz = bytes(2 * int(8000 * LIMIT_S))
    frames = render(limited_stub, raw_audio=eight_khz, audio_encoding=S16, sample_rate=8000)
    assert len(frames) == expected_frames(int(16000 * LIMIT_S))


# ---------------------------------------------------------------------------------------------
# WAV files through `lipsync render`
# ---------------------------------------------------------------------------------------------

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IEEE_FLOAT = 3


def write_wav(
    path: Path,
    data: bytes,
    *,
    format_tag: int,
    channels: int,
    sample_rate: int,
    bits: int,
    extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> Path:
    """Write a RIFF WAVE file with `extra_chunks` between the fmt and data chunks."""
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHHH",
        format_tag,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        0,  # cbSize: no extension
    )
    body = b"WAVE"
    for chunk_id, chunk in ((b"fmt ", fmt), *extra_chunks, (b"data", data)):
        body += chunk_id + struct.pack("<I", len(chunk)) + chunk
        if len(chunk) % 2:
            body += b"\x00"  # RIFF pads chunks to an even size
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def list_chunk() -> bytes:
    # An INFO list with one software tag of odd length, so the reader must skip a pad byte.
    text = b"lipsync test\x00"
    return b"INFO" + b"ISFT" + struct.pack("<I", len(text)) + text + b"\x00"


def wav_cases(speech: np.ndarray, folder: Path) -> dict[str, Path]:
    second = speech[SLICE_START : SLICE_START + 16000]
    as_float = second.astype(np.float32) / 32768.0
    at_44k = to_s16(soxr.resample(as_float, 16000, 44100, quality="HQ"))
    return {
        "16-bit mono 16 kHz": write_wav(
            folder / "s16.wav",
            second.tobytes(),
            format_tag=WAVE_FORMAT_PCM,
            channels=1,
            sample_rate=16000,
            bits=16,
        ),
        "32-bit float mono 16 kHz": write_wav(
            folder / "f32.wav",
            as_float.astype("<f4").tobytes(),
            format_tag=WAVE_FORMAT_IEEE_FLOAT,
            channels=1,
            sample_rate=16000,
            bits=32,
        ),
        "16-bit stereo 44.1 kHz": write_wav(
            folder / "stereo44.wav",
            np.repeat(at_44k, 2).tobytes(),
            format_tag=WAVE_FORMAT_PCM,
            channels=2,
            sample_rate=44100,
            bits=16,
        ),
        "16-bit mono with a LIST chunk": write_wav(
            folder / "list.wav",
            second.tobytes(),
            format_tag=WAVE_FORMAT_PCM,
            channels=1,
            sample_rate=16000,
            bits=16,
            extra_chunks=((b"LIST", list_chunk()),),
        ),
    }


WAV_CASES = [
    "16-bit mono 16 kHz",
    "32-bit float mono 16 kHz",
    "16-bit stereo 44.1 kHz",
    "16-bit mono with a LIST chunk",
]


@pytest.mark.parametrize("case", WAV_CASES)
def test_cli_renders_wav(split_deployment, speech, tmp_path, case):
    wav = wav_cases(speech, tmp_path)[case]
    out = tmp_path / "out.mp4"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync",
            "render",
            "--audio",
            str(wav),
            "--avatar",
            "demo",
            "--server",
            split_deployment.compositing.address,
            "-o",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    with av.open(str(out)) as container:
        audio_stream = container.streams.audio[0]
        assert audio_stream.channels == (2 if "stereo" in case else 1)
        assert audio_stream.sample_rate == (44100 if "44.1" in case else 16000)
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == expected_frames(16000) == 24
