"""Start the monolithic and the split deployments on loopback and drive both in one run.

Requests alternate between the shapes so that machine noise hits both alike. Every figure is
measured in this run: cold start to SERVING, latency percentiles, throughput, RSS and CPU time
per process, bytes between the tiers, the per-stage times the responses report, and a
model-only baseline (ONNX Runtime plus JPEG encoding in this process, without serving code).
"""

from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np
import yaml

from lipsync.bench.procs import cpu_seconds
from lipsync.bench.stats import summarize
from lipsync.client import LipsyncClient, StreamStats
from lipsync.demo.run import (
    DEMO_AVATAR_ID,
    ServiceProcess,
    ensure_demo_data,
    free_port,
    speech_wav,
    start_service,
    wait_serving,
)
from lipsync.media import WavAudio, read_wav
from lipsync.protos import compositing_pb2, compositing_pb2_grpc, inference_pb2, inference_pb2_grpc
from lipsync.serving import channel_options
from lipsync.settings import MiB

SHAPES = ("monolithic", "split")
SYNCTALK_AVATAR_ID = "bench-synctalk"
FRAME_SAMPLES = 640  # 40 ms at 16 kHz


@dataclass
class Shape:
    """One deployment shape under test."""

    name: str
    public: ServiceProcess
    processes: list[ServiceProcess]
    cold_start_s: float
    latencies_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    frames: int = 0
    cpu_s: float = 0.0
    throughput: dict[str, float] = field(default_factory=dict)
    streams: dict[str, list[float]] = field(default_factory=dict)


def prepare_avatar(data_dir: Path, model: str) -> tuple[Path, Path, str]:
    """Build the benchmark's models and avatar; return (audio encoder, avatars dir, avatar id)."""
    encoder, avatars_dir = ensure_demo_data(data_dir)
    if model == "demo":
        return encoder, avatars_dir, DEMO_AVATAR_ID

    from lipsync.avatar.build import build_avatar
    from lipsync.demo.synctalk_unet import build_synctalk_unet

    if not (avatars_dir / SYNCTALK_AVATAR_ID / "avatar.yaml").is_file():
        unet = build_synctalk_unet(data_dir / "models" / "synctalk_unet_random.onnx")
        demo = avatars_dir / DEMO_AVATAR_ID
        build_avatar(
            avatars_dir,
            SYNCTALK_AVATAR_ID,
            backgrounds=demo / "frames",
            crop_rects=demo / "crop_rects.json",
            unet=unet,
        )
    return encoder, avatars_dir, SYNCTALK_AVATAR_ID


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start_shapes(
    run_dir: Path, encoder: Path, avatars_dir: Path, avatar_id: str, batch_size: int
) -> dict[str, Shape]:
    """Start both shapes one after the other and time each from spawn to SERVING."""
    run_dir.mkdir(parents=True, exist_ok=True)
    models = {"audio_encoder": str(encoder), "batch_size": batch_size, "preload": [avatar_id]}
    server = {"host": "127.0.0.1", "grace_period_s": 2}
    shapes: dict[str, Shape] = {}

    port = free_port()
    config = _write(
        run_dir / "monolithic.yaml",
        {
            "server": {**server, "port": port},
            "avatars_dir": str(avatars_dir),
            "inference": {"models": models},
            "compositing": {"preload": [avatar_id]},
        },
    )
    started = time.monotonic()
    mono = start_service("monolithic", config, f"127.0.0.1:{port}", run_dir)
    wait_serving(mono, 600)
    shapes["monolithic"] = Shape("monolithic", mono, [mono], time.monotonic() - started)

    inference_port, compositing_port = free_port(), free_port()
    inference_config = _write(
        run_dir / "inference.yaml",
        {
            "server": {**server, "port": inference_port},
            "avatars_dir": str(avatars_dir),
            "models": models,
        },
    )
    compositing_config = _write(
        run_dir / "compositing.yaml",
        {
            "server": {**server, "port": compositing_port},
            "avatars_dir": str(avatars_dir),
            "inference": {"address": f"127.0.0.1:{inference_port}"},
            "preload": [avatar_id],
        },
    )
    started = time.monotonic()
    inference = start_service("inference", inference_config, f"127.0.0.1:{inference_port}", run_dir)
    wait_serving(inference, 600)
    compositing = start_service(
        "compositing", compositing_config, f"127.0.0.1:{compositing_port}", run_dir
    )
    wait_serving(compositing, 600)
    shapes["split"] = Shape(
        "split", compositing, [inference, compositing], time.monotonic() - started
    )
    return shapes


def batch_audio(batch_size: int) -> bytes:
    """Speech of the length a batch needs (batch_size x 40 ms), float32 mono at 16 kHz."""
    samples = read_wav(speech_wav()).to_float()[:, 0]
    needed = batch_size * FRAME_SAMPLES
    repeats = -(-needed // len(samples))
    return np.tile(samples, repeats)[:needed].astype("<f4").tobytes()


def _stub(address: str) -> compositing_pb2_grpc.CompositingServiceStub:
    channel = grpc.insecure_channel(address, options=channel_options(256 * MiB))
    return compositing_pb2_grpc.CompositingServiceStub(channel)


def _unary(stub, avatar_id: str, audio: bytes, batch_size: int, start: int):
    request = compositing_pb2.CompositeBatchRequest(
        model_id=avatar_id, raw_audio=audio, batch_size=batch_size, start_frame_idx=start
    )
    started = time.perf_counter()
    response = stub.InferBatchComposite(request, timeout=600)
    latency_ms = (time.perf_counter() - started) * 1000
    if len(response.composited_frames) != batch_size:
        raise RuntimeError(f"expected {batch_size} frames, got {len(response.composited_frames)}")
    return latency_ms, response


def drive_unary(
    shapes: dict[str, Shape],
    avatar_id: str,
    audio: bytes,
    batch_size: int,
    iterations: int,
    warmup: int,
) -> None:
    """Send batches alternating between the shapes; record latencies, stages and CPU time."""
    stubs = {name: _stub(shape.public.address) for name, shape in shapes.items()}
    for i in range(warmup):
        for name in SHAPES:
            _unary(stubs[name], avatar_id, audio, batch_size, i)

    cpu_before = {
        name: sum(cpu_seconds(p.process.pid) for p in shape.processes)
        for name, shape in shapes.items()
    }
    for i in range(iterations):
        order = SHAPES if i % 2 == 0 else SHAPES[::-1]
        for name in order:
            latency, response = _unary(stubs[name], avatar_id, audio, batch_size, i * 7)
            shape = shapes[name]
            shape.latencies_ms.append(latency)
            shape.frames += batch_size
            for stage, value in (
                ("audio", response.audio_processing_ms),
                ("inference", response.inference_time_ms),
                ("composite", response.composite_time_ms),
                ("total", response.total_time_ms),
            ):
                shape.stages.setdefault(stage, []).append(value)
    for name, shape in shapes.items():
        shape.cpu_s = sum(cpu_seconds(p.process.pid) for p in shape.processes) - cpu_before[name]


def drive_throughput(
    shapes: dict[str, Shape],
    avatar_id: str,
    audio: bytes,
    batch_size: int,
    seconds: float,
    concurrency: int,
) -> None:
    """Closed-loop load with `concurrency` clients, in alternating slices per shape."""
    slices = 2
    totals = {name: [0, 0.0] for name in SHAPES}
    for _ in range(slices):
        for name in SHAPES:
            stub = _stub(shapes[name].public.address)
            deadline = time.monotonic() + seconds / slices
            lock = threading.Lock()

            def client(stub=stub, deadline=deadline, lock=lock, name=name) -> None:
                while time.monotonic() < deadline:
                    _unary(stub, avatar_id, audio, batch_size, 0)
                    with lock:
                        totals[name][0] += 1

            started = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                for future in [pool.submit(client) for _ in range(concurrency)]:
                    future.result()
            totals[name][1] += time.monotonic() - started
    for name, (requests, elapsed) in totals.items():
        shapes[name].throughput = {
            "requests_per_s": requests / elapsed,
            "frames_per_s": requests * batch_size / elapsed,
            "concurrency": concurrency,
        }


def speech_cut(seconds: float) -> WavAudio:
    """Cut or repeat the bundled speech to `seconds` and return it as 16-bit mono at 16 kHz."""
    speech = read_wav(speech_wav())
    samples = np.frombuffer(speech.data, dtype="<i2")
    needed = int(seconds * speech.sample_rate)
    data = np.tile(samples, -(-needed // len(samples)))[:needed]
    return WavAudio(data.tobytes(), speech.encoding, speech.sample_rate, 1)


def drive_streams(
    shapes: dict[str, Shape], avatar_id: str, audio: WavAudio, rounds: int, chunk_ms: float
) -> None:
    """Stream the audio through StreamRender at real-time pace and as fast as possible.

    The shapes alternate within each round. Records per shape the first-frame latency, the
    frame latencies and real-time factor of the paced sends, and the frames/s of the fast ones.
    """
    clients = {name: LipsyncClient(shape.public.address) for name, shape in shapes.items()}
    try:
        for round_index in range(rounds):
            order = SHAPES if round_index % 2 == 0 else SHAPES[::-1]
            for name in order:
                figures = shapes[name].streams
                stats = StreamStats()
                for _ in clients[name].stream_render(
                    avatar_id, audio, chunk_ms=chunk_ms, realtime=True, stats=stats
                ):
                    pass
                figures.setdefault("first_frame_ms", []).append(stats.first_frame_ms)
                figures.setdefault("frame_latency_ms", []).extend(stats.latencies_ms)
                figures.setdefault("real_time_factor", []).append(stats.real_time_factor)

                fast = StreamStats()
                for _ in clients[name].stream_render(
                    avatar_id, audio, chunk_ms=chunk_ms, realtime=False, stats=fast
                ):
                    pass
                figures.setdefault("fast_frames_per_s", []).append(
                    fast.frames / fast.wall_s if fast.wall_s else 0.0
                )
    finally:
        for client in clients.values():
            client.close()


def wire_bytes_per_frame(inference_address: str, avatar_id: str, audio: bytes, batch: int) -> float:
    """Serialized bytes of the inference tier's responses per frame, for one batch."""
    channel = grpc.insecure_channel(inference_address, options=channel_options(256 * MiB))
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    request = inference_pb2.RenderMouthsRequest(
        model_id=avatar_id, raw_audio=audio, frame_count=batch, pad_to_frames=batch
    )
    total = sum(r.ByteSize() for r in stub.RenderMouths(request, timeout=600))
    channel.close()
    return (total + request.ByteSize()) / batch


def model_baseline(
    avatar_dir: Path, encoder_path: Path, audio: bytes, batch_size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Time the models alone (ONNX Runtime) and a JPEG encode of the same frames with OpenCV."""
    import onnxruntime as ort

    from inference_service.features import audio_context, mel_windows, pad_features
    from inference_service.mel import melspectrogram

    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    unet = ort.InferenceSession(str(avatar_dir / "unet.onnx"), providers=["CPUExecutionProvider"])
    faces = np.load(avatar_dir / "face_inputs.npy", mmap_mode="r")[:batch_size]
    face = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    face = np.concatenate([face, face], axis=1)
    frame = cv2.imread(str(sorted((avatar_dir / "frames").iterdir())[0]))

    model_ms, jpeg_ms = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        mel = melspectrogram(np.frombuffer(audio, "<f4"))
        features = encoder.run(None, {"mel_input": mel_windows(mel)})[0]
        padded = pad_features(features)
        context = audio_context(padded, np.arange(batch_size) % len(padded))
        unet.run(None, {"input": face, "audio": context})
        model_ms.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        for _ in range(batch_size):
            cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 75])
        jpeg_ms.append((time.perf_counter() - started) * 1000)
    return {"model": summarize(model_ms), "jpeg": summarize(jpeg_ms)}


def machine_description() -> dict[str, str]:
    import grpc as grpc_module
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc_module.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }
