"""`lipsync avatar build` from numbered frames and from a video, and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from lipsync.avatar.build import build_avatar
from lipsync.avatar.geometry import crop_face, face_from_crop, load_crop_rects
from lipsync.avatar.spec import load_spec, resolve_avatar_dir
from lipsync.errors import FailedPrecondition, InvalidArgument, NotFound

WIDTH, HEIGHT, COUNT = 320, 240, 6


@pytest.fixture(scope="module")
def unet(demo_data):
    return demo_data.avatar_dir / "unet.onnx"


@pytest.fixture
def frames_dir(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(COUNT):
        image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i + 1}.png"), image)
    return folder


def boxes(count: int = COUNT) -> list[list[int]]:
    return [[40 + i, 30 + i, 140 + i, 130 + i] for i in range(count)]


def write_rects(path, rects) -> object:
    path.write_text(json.dumps(rects))
    return path


def test_build_from_frames_precomputes_face_inputs(tmp_path, frames_dir, unet):
    rects = write_rects(tmp_path / "rects.json", boxes())
    folder = build_avatar(
        tmp_path / "avatars", "alice", backgrounds=frames_dir, crop_rects=rects, unet=unet
    )

    spec = load_spec(folder)
    assert (spec.id, spec.width, spec.height, spec.frame_count) == ("alice", WIDTH, HEIGHT, COUNT)
    assert sorted(p.name for p in (folder / "frames").iterdir())[0] == "000000.png"
    faces = np.load(folder / "face_inputs.npy")
    assert faces.shape == (COUNT, 320, 320, 3)
    assert faces.dtype == np.uint8
    for i in range(COUNT):
        source = cv2.imread(str(frames_dir / f"{i + 1}.png"))
        np.testing.assert_array_equal(faces[i], face_from_crop(crop_face(source, boxes()[i])))
    loaded = load_crop_rects(
        folder / "crop_rects.json", frame_count=COUNT, width=WIDTH, height=HEIGHT
    )
    assert loaded.tolist() == boxes()


def test_build_from_video(tmp_path, unet):
    video = tmp_path / "person.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(COUNT):
            image = np.full((HEIGHT, WIDTH, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

    folder = build_avatar(
        tmp_path / "avatars",
        "bob",
        backgrounds=video,
        crop_rects=np.array(boxes()),
        unet=unet,
        frame_format="jpg",
    )
    assert load_spec(folder).frame_count == COUNT
    assert len(list((folder / "frames").glob("*.jpg"))) == COUNT


def test_box_leaving_the_frame_names_the_frame(tmp_path, frames_dir, unet):
    rects = boxes()
    rects[4] = [250, 30, 330, 110]
    with pytest.raises(FailedPrecondition, match=r"frame 4 .*leaves the 320x240 frame"):
        build_avatar(
            tmp_path / "avatars",
            "alice",
            backgrounds=frames_dir,
            crop_rects=write_rects(tmp_path / "r.json", rects),
            unet=unet,
        )
    assert not (tmp_path / "avatars" / "alice").exists()


def test_box_count_must_match_frames(tmp_path, frames_dir, unet):
    with pytest.raises(FailedPrecondition, match="5 face boxes for 6 background frames"):
        build_avatar(
            tmp_path / "avatars",
            "alice",
            backgrounds=frames_dir,
            crop_rects=np.array(boxes(5)),
            unet=unet,
        )


def test_unet_without_contract_inputs_is_rejected(tmp_path, frames_dir, demo_data):
    with pytest.raises(FailedPrecondition, match="lacks input"):
        build_avatar(
            tmp_path / "avatars",
            "alice",
            backgrounds=frames_dir,
            crop_rects=np.array(boxes()),
            unet=demo_data.audio_encoder,
        )


def test_existing_package_needs_overwrite(tmp_path, frames_dir, unet):
    args = dict(backgrounds=frames_dir, crop_rects=np.array(boxes()), unet=unet)
    build_avatar(tmp_path / "avatars", "alice", **args)
    with pytest.raises(FailedPrecondition, match="already exists"):
        build_avatar(tmp_path / "avatars", "alice", **args)
    build_avatar(tmp_path / "avatars", "alice", overwrite=True, **args)


@pytest.mark.parametrize("avatar_id", ["../x", "a/b", "..", ".hidden", "", "x" * 65])
def test_avatar_ids_cannot_leave_the_avatars_dir(tmp_path, avatar_id):
    with pytest.raises(InvalidArgument):
        resolve_avatar_dir(tmp_path, avatar_id)


def test_missing_avatar_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="ghost"):
        resolve_avatar_dir(tmp_path, "ghost")


def test_cli_builds_an_avatar(tmp_path, frames_dir, unet):
    rects = write_rects(tmp_path / "rects.json", boxes())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync",
            "avatar",
            "build",
            "--id",
            "carol",
            "--frames",
            str(frames_dir),
            "--crop-rects",
            str(rects),
            "--unet",
            str(unet),
            "--avatars-dir",
            str(tmp_path / "avatars"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "built avatar 'carol'" in result.stdout
    assert (tmp_path / "avatars" / "carol" / "avatar.yaml").is_file()


def test_cli_reports_a_bad_box_without_traceback(tmp_path, frames_dir, unet):
    rects = boxes()
    rects[2] = [0, 0, 1000, 1000]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync",
            "avatar",
            "build",
            "--id",
            "dave",
            "--frames",
            str(frames_dir),
            "--crop-rects",
            str(write_rects(tmp_path / "r.json", rects)),
            "--unet",
            str(unet),
            "--avatars-dir",
            str(tmp_path / "avatars"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "frame 2" in result.stderr
    assert "Traceback" not in result.stderr
