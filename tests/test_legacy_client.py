"""A client generated from the original system's .proto works against both deployment shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from lipsync.avatar.backgrounds import numbered_images
from lipsync.avatar.build import build_avatar

LEGACY_DIR = Path(__file__).resolve().parent / "legacy"
AVATAR = "legacy-client"


@pytest.fixture(scope="module")
def legacy_stubs(tmp_path_factory) -> Path:
    """Stubs generated now from tests/legacy/compositing.proto, as an old client would have."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("legacy_stubs")
    code = protoc.main(
        [
            "protoc",
            f"-I{LEGACY_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(LEGACY_DIR / "compositing.proto"),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def legacy_avatar(demo_data, tmp_path_factory) -> str:
    """A small avatar of its own, so the client's UnloadModel leaves the demo avatar alone."""
    if (demo_data.avatars_dir / AVATAR).exists():
        return AVATAR
    frames = tmp_path_factory.mktemp("legacy_frames")
    boxes = []
    rects = (demo_data.avatar_dir / "crop_rects.json").read_text()
    for i, path in enumerate(numbered_images(demo_data.avatar_dir / "frames")[:12]):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.imread(str(path)))
        boxes.append(json.loads(rects)[i])
    build_avatar(
        demo_data.avatars_dir,
        AVATAR,
        backgrounds=frames,
        crop_rects=json_file(frames.parent / "legacy_rects.json", boxes),
        unet=demo_data.avatar_dir / "unet.onnx",
    )
    return AVATAR


def json_file(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_original_client_works_unchanged(public_address, legacy_stubs, legacy_avatar):
    env = {**os.environ, "PYTHONPATH": str(legacy_stubs)}
    result = subprocess.run(
        [sys.executable, str(LEGACY_DIR / "legacy_client.py"), public_address, legacy_avatar],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=legacy_stubs,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])

    batch = results["batch"]
    assert batch["frames"] == 24
    assert batch["jpeg"]
    assert batch["success"]
    assert batch["error"] == ""
    assert all(ms > 0 for ms in batch["timings"][:3])
    assert batch["gpu_id"] == -1

    assert results["visual_frames"] == 4
    assert results["audio_features"] == 3
    code, details = results["short_visual_frames"]
    assert code == "INVALID_ARGUMENT"
    assert "visual_frames" in details
    assert "4915200" in details

    assert results["list"][legacy_avatar] is True
    assert results["list"]["demo"] is True
    success, load_ms, memory = results["load"]
    assert success
    assert load_ms > 0
    assert memory > 0
    loaded, total_memory, ids = results["stats"]
    assert legacy_avatar in ids
    assert loaded == len(ids)
    assert total_memory >= memory
    assert results["health"][:2] == [True, True]
    assert results["unload"] is True
    assert legacy_avatar not in results["after_unload"]
