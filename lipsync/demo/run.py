"""`lipsync demo`: build the demo avatar, start both tiers on loopback, render the bundled speech.

The services run as separate processes talking real gRPC, exactly as in a split deployment;
only their ports are picked at random so the demo never collides with a running service.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

DEMO_AVATAR_ID = "demo"
AUDIO_ENCODER_FILE = "models/audio_encoder.onnx"


def speech_wav() -> Path:
    """Return the path of the bundled speech sample."""
    return Path(str(resources.files("lipsync.demo") / "assets" / "speech.wav"))


def ensure_demo_data(data_dir: Path, *, frame_count: int | None = None) -> tuple[Path, Path]:
    """Build the demo models and avatar under data_dir unless they exist; return both paths.

    Returns (audio encoder path, avatars folder).
    """
    from lipsync.avatar.build import build_avatar
    from lipsync.demo.face import DEFAULT_FRAME_COUNT, draw_frame
    from lipsync.demo.models import build_audio_encoder, build_unet

    encoder = data_dir / AUDIO_ENCODER_FILE
    if not encoder.is_file():
        build_audio_encoder(encoder)
        logger.info("built demo audio encoder %s", encoder)

    avatars_dir = data_dir / "avatars"
    if not (avatars_dir / DEMO_AVATAR_ID / "avatar.yaml").is_file():
        count = frame_count or DEFAULT_FRAME_COUNT
        with tempfile.TemporaryDirectory(prefix="lipsync-demo-") as tmp:
            frames_dir = Path(tmp) / "frames"
            frames_dir.mkdir()
            boxes = []
            import cv2

            for i in range(count):
                frame, box = draw_frame(i)
                cv2.imwrite(str(frames_dir / f"{i}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                boxes.append(list(box))
            rects = Path(tmp) / "crop_rects.json"
            rects.write_text(json.dumps(boxes), encoding="utf-8")
            unet = build_unet(Path(tmp) / "unet.onnx")
            build_avatar(
                avatars_dir, DEMO_AVATAR_ID, backgrounds=frames_dir, crop_rects=rects, unet=unet
            )
    return encoder, avatars_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    """A service started as a child process, with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    address: str

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Send SIGTERM and wait; kill if the service does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def write_configs(
    folder: Path, *, encoder: Path, avatars_dir: Path, inference_port: int, compositing_port: int
) -> tuple[Path, Path]:
    """Write loopback configs for both tiers with the demo avatar preloaded."""
    inference = {
        "server": {"host": "127.0.0.1", "port": inference_port, "grace_period_s": 5},
        "avatars_dir": str(avatars_dir.resolve()),
        "models": {"audio_encoder": str(encoder.resolve()), "preload": [DEMO_AVATAR_ID]},
    }
    compositing = {
        "server": {"host": "127.0.0.1", "port": compositing_port, "grace_period_s": 5},
        "avatars_dir": str(avatars_dir.resolve()),
        "inference": {"address": f"127.0.0.1:{inference_port}"},
        "preload": [DEMO_AVATAR_ID],
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "inference.yaml", folder / "compositing.yaml"
    for path, config in zip(paths, (inference, compositing), strict=True):
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return paths


def write_monolithic_config(folder: Path, *, encoder: Path, avatars_dir: Path, port: int) -> Path:
    """Write a loopback config for the monolithic service with the demo avatar preloaded."""
    config = {
        "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 5},
        "avatars_dir": str(avatars_dir.resolve()),
        "inference": {
            "models": {"audio_encoder": str(encoder.resolve()), "preload": [DEMO_AVATAR_ID]}
        },
        "compositing": {"preload": [DEMO_AVATAR_ID]},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "monolithic.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start_service(name: str, config: Path, address: str, log_dir: Path) -> ServiceProcess:
    """Start `lipsync serve NAME --config CONFIG` in a child process, logging to a file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lipsync", "serve", name, "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    return ServiceProcess(name, process, log_path, address)


def wait_serving(service: ServiceProcess, timeout_s: float) -> None:
    """Wait until the service reports SERVING; raise with its log if it dies or times out."""
    from lipsync.client import wait_for_serving

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} service exited with code {service.process.returncode}:\n"
                f"{service.log_tail()}"
            )
        if wait_for_serving(service.address, timeout_s=1.0):
            return
    raise RuntimeError(
        f"{service.name} service not SERVING after {timeout_s:.0f} s:\n{service.log_tail()}"
    )


def run_demo(
    data_dir: Path, out: Path, *, audio: Path | None = None, timeout_s: float = 180
) -> Path:
    """Build what is missing, start both tiers, render the speech sample to out, stop the tiers."""
    from lipsync.client import LipsyncClient
    from lipsync.media import read_wav

    started = time.perf_counter()
    print(f"preparing the demo avatar and models in {data_dir} ...", flush=True)
    encoder, avatars_dir = ensure_demo_data(data_dir)

    inference_port, compositing_port = free_port(), free_port()
    run_dir = data_dir / "demo-run"
    inference_config, compositing_config = write_configs(
        run_dir,
        encoder=encoder,
        avatars_dir=avatars_dir,
        inference_port=inference_port,
        compositing_port=compositing_port,
    )

    services: list[ServiceProcess] = []
    try:
        print(f"starting the inference service on 127.0.0.1:{inference_port} ...", flush=True)
        services.append(
            start_service(
                "inference", inference_config, f"127.0.0.1:{inference_port}", run_dir / "logs"
            )
        )
        wait_serving(services[-1], timeout_s)
        print(f"starting the compositing service on 127.0.0.1:{compositing_port} ...", flush=True)
        services.append(
            start_service(
                "compositing", compositing_config, f"127.0.0.1:{compositing_port}", run_dir / "logs"
            )
        )
        wait_serving(services[-1], timeout_s)

        wav = read_wav(audio or speech_wav())
        client = LipsyncClient(f"127.0.0.1:{compositing_port}")
        try:
            stats = client.render_to_mp4(DEMO_AVATAR_ID, wav, out, progress=True)
        finally:
            client.close()
    finally:
        for service in reversed(services):
            service.stop()

    print(f"wrote {out} ({wav.duration_s:.2f} s of speech, service logs in {run_dir / 'logs'})")
    print(f"timing: {stats.summary()}; whole demo {time.perf_counter() - started:.1f} s")
    return out
