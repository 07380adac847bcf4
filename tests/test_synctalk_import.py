"""`lipsync avatar import` on a small SyncTalk_2D dataset made in the test, and its input errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from lipsync.avatar.synctalk_import import (
    face_box,
    import_synctalk_dataset,
    read_landmarks,
)
from lipsync.errors import FailedPrecondition

WIDTH, HEIGHT, COUNT = 320, 240, 4


def box_landmarks(rng: np.random.Generator, x1: float, y1: float, x2: float) -> np.ndarray:
    """68 float landmarks inside the frame, with points 1, 52 and 31 set to make a face box."""
    points = rng.uniform((0, 0), (WIDTH - 1, HEIGHT - 1), size=(68, 2))
    points[1] = (x1, rng.uniform(0, HEIGHT))
    points[52] = (rng.uniform(0, WIDTH), y1)
    points[31] = (x2, rng.uniform(0, HEIGHT))
    return points


def write_lms(path: Path, points: np.ndarray) -> Path:
    path.write_text("".join(f"{float(x)!r} {float(y)!r}\n" for x, y in points))
    return path


# Landmarks 1, 52 and 31 per frame: x1 and x2 of the box and its top y1, as floats with
# fractions, so the truncation decides the pixel.
FRAME_BOXES = [
    (40.9, 30.2, 140.99),
    (41.5, 31.999, 141.0),
    (42.0, 29.5, 142.7),
    (43.3, 30.0, 143.3),
]


def expected_box(x1: float, y1: float, x2: float) -> list[int]:
    """The face box as inference_328.py computes it, from the same floats."""
    lms = np.array([[x1, 0.0], [x2, 0.0], [0.0, y1]], dtype=np.float32).astype(np.int32)
    xmin, xmax, ymin = lms[0][0], lms[1][0], lms[2][1]
    return [int(xmin), int(ymin), int(xmax), int(ymin + xmax - xmin)]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A SyncTalk_2D dataset folder: COUNT drawn JPEG frames and their landmark files."""
    rng = np.random.default_rng(17)
    folder = tmp_path / "dataset"
    (folder / "full_body_img").mkdir(parents=True)
    (folder / "landmarks").mkdir()
    for i, (x1, y1, x2) in enumerate(FRAME_BOXES):
        frame = np.full((HEIGHT, WIDTH, 3), (40, 90, 160), dtype=np.uint8)
        cv2.circle(frame, (100 + i, 110), 70, (120, 170, 220), -1)
        cv2.ellipse(frame, (95 + i, 150), (30, 8 + 2 * i), 0, 0, 360, (40, 40, 150), -1)
        frame += rng.integers(0, 12, size=frame.shape, dtype=np.uint8)
        cv2.imwrite(str(folder / "full_body_img" / f"{i}.jpg"), frame)
        write_lms(folder / "landmarks" / f"{i}.lms", box_landmarks(rng, x1, y1, x2))
    return folder


@pytest.fixture(scope="module")
def unet(demo_data) -> Path:
    return demo_data.avatar_dir / "unet.onnx"


def import_dataset(dataset: Path, unet: Path, avatars_dir: Path, **options):
    return import_synctalk_dataset(
        dataset, unet=unet, avatars_dir=avatars_dir, avatar_id="imported", **options
    )


# ---------------------------------------------------------------------------------------------
# Landmarks and the face box
# ---------------------------------------------------------------------------------------------


def test_landmarks_truncate_like_reference(tmp_path):
    points = np.zeros((68, 2))
    points[:6] = [
        (12.9, 0.99),
        (-0.7, -1.5),
        (99.99999999, 239.999999),  # float32 rounds both up to whole numbers before truncation
        (1000.5, 7.0),
        (3.0000001, 2.9999999),
        (-12.25, 0.0),
    ]
    path = write_lms(tmp_path / "0.lms", points)

    # inference_328.py: split(" "), float32 per line, then int32 for the whole array.
    rows = [np.array(line.split(" "), dtype=np.float32) for line in path.read_text().splitlines()]
    reference = np.array(rows, dtype=np.int32)

    landmarks = read_landmarks(path)
    assert landmarks.dtype == np.int32
    assert landmarks.shape == (68, 2)
    np.testing.assert_array_equal(landmarks, reference)
    assert landmarks[:6].tolist() == [[12, 0], [0, -1], [100, 240], [1000, 7], [3, 3], [-12, 0]]


def test_landmarks_accept_tabs_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "0.lms"
    path.write_text("".join(f"{i}.5\t{i + 1}.5 \n" for i in range(68)) + "\n\n")
    landmarks = read_landmarks(path)
    assert landmarks[0].tolist() == [0, 1]
    assert landmarks[67].tolist() == [67, 68]


def test_face_box_uses_landmarks_1_31_52():
    landmarks = np.zeros((68, 2), dtype=np.int32)
    landmarks[1] = (40, 999)
    landmarks[31] = (140, 999)
    landmarks[52] = (999, 30)
    assert face_box(landmarks) == (40, 30, 140, 130)


# ---------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------


def test_import_builds_package_with_reference_boxes(dataset, unet, tmp_path):
    result = import_dataset(dataset, unet, tmp_path / "avatars", face_interpolation="linear")

    expected = [expected_box(*box) for box in FRAME_BOXES]
    assert result.boxes.tolist() == expected
    assert result.clipped_frames == []
    assert result.frame_count == COUNT
    assert json.loads((result.folder / "crop_rects.json").read_text()) == expected

    spec = yaml.safe_load((result.folder / "avatar.yaml").read_text())
    assert (spec["id"], spec["width"], spec["height"]) == ("imported", WIDTH, HEIGHT)
    assert (spec["frame_count"], spec["face_interpolation"]) == (COUNT, "linear")
    assert spec["channel_order"] == "bgr"


def test_imported_package_matches_inference_328_face_input(dataset, unet, tmp_path):
    result = import_dataset(dataset, unet, tmp_path / "avatars", face_interpolation="linear")
    faces = np.load(result.folder / "face_inputs.npy")

    for i in range(COUNT):
        # inference_328.py, including its positional INTER_CUBIC that OpenCV takes as dst.
        img = cv2.imread(str(dataset / "full_body_img" / f"{i}.jpg"))
        stored = cv2.imread(str(result.folder / "frames" / f"{i:06d}.png"))
        np.testing.assert_array_equal(stored, img)

        xmin, ymin, xmax, ymax = expected_box(*FRAME_BOXES[i])
        crop_img = cv2.resize(img[ymin:ymax, xmin:xmax], (328, 328), cv2.INTER_CUBIC)
        np.testing.assert_array_equal(faces[i], crop_img[4:324, 4:324])


def test_import_default_interpolation_is_cubic(dataset, unet, tmp_path):
    result = import_dataset(dataset, unet, tmp_path / "avatars")
    assert yaml.safe_load((result.folder / "avatar.yaml").read_text())["face_interpolation"] == (
        "cubic"
    )


# ---------------------------------------------------------------------------------------------
# Boxes that leave the frame
# ---------------------------------------------------------------------------------------------


def move_box(dataset: Path, frame: int, x1: float, y1: float, x2: float) -> None:
    rng = np.random.default_rng(frame)
    write_lms(dataset / "landmarks" / f"{frame}.lms", box_landmarks(rng, x1, y1, x2))


def test_box_leaving_frame_rejected(dataset, unet, tmp_path):
    move_box(dataset, 2, 250.5, 100.0, 330.2)  # [250, 100, 330, 180]: past the right edge

    with pytest.raises(FailedPrecondition) as caught:
        import_dataset(dataset, unet, tmp_path / "avatars")

    message = str(caught.value)
    assert "frame 2" in message
    assert "[250, 100, 330, 180]" in message
    assert "320x240" in message
    assert "2.lms" in message
    assert "--out-of-frame clip" in message
    assert not (tmp_path / "avatars" / "imported").exists()


def test_box_leaving_frame_clipped_and_logged(dataset, unet, tmp_path, caplog):
    move_box(dataset, 1, 250.5, 200.0, 330.2)  # [250, 200, 330, 280]: right and bottom
    move_box(dataset, 3, -10.5, 5.0, 60.0)  # [-10, 5, 60, 75]: left

    with caplog.at_level(logging.WARNING, logger="lipsync.avatar.synctalk_import"):
        result = import_dataset(dataset, unet, tmp_path / "avatars", out_of_frame="clip")

    assert result.clipped_frames == [1, 3]
    assert result.boxes[1].tolist() == [250, 200, 320, 240]
    assert result.boxes[3].tolist() == [0, 5, 60, 75]
    assert result.boxes[0].tolist() == expected_box(*FRAME_BOXES[0])
    clip_lines = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(clip_lines) == 1
    assert "2 of 4 frames" in clip_lines[0]


def test_clip_matches_reference_slicing_past_right_and_bottom(dataset, unet, tmp_path):
    # NumPy slicing stops at the frame edge, so inference_328.py crops and pastes the clipped box.
    move_box(dataset, 0, 250.5, 200.0, 330.2)
    result = import_dataset(
        dataset, unet, tmp_path / "avatars", out_of_frame="clip", face_interpolation="linear"
    )

    img = cv2.imread(str(dataset / "full_body_img" / "0.jpg"))
    crop_img = cv2.resize(img[200:280, 250:330], (328, 328), cv2.INTER_CUBIC)
    faces = np.load(result.folder / "face_inputs.npy")
    np.testing.assert_array_equal(faces[0], crop_img[4:324, 4:324])


# ---------------------------------------------------------------------------------------------
# Dataset errors
# ---------------------------------------------------------------------------------------------


def lms_lines(count: int) -> str:
    return "".join(f"{10 + i}.0 {20 + i}.0\n" for i in range(count))


def break_missing_file(dataset: Path) -> None:
    (dataset / "landmarks" / "2.lms").unlink()


def break_extra_file(dataset: Path) -> None:
    (dataset / "landmarks" / "9.lms").write_text(lms_lines(68))


def break_line_count(dataset: Path) -> None:
    (dataset / "landmarks" / "1.lms").write_text(lms_lines(67))


def break_empty_file(dataset: Path) -> None:
    (dataset / "landmarks" / "1.lms").write_text("")


def break_unparsable_line(dataset: Path) -> None:
    lines = lms_lines(68).splitlines()
    lines[11] = "12.0 abc"
    (dataset / "landmarks" / "3.lms").write_text("\n".join(lines))


def break_three_numbers(dataset: Path) -> None:
    lines = lms_lines(68).splitlines()
    lines[4] = "1.0 2.0 3.0"
    (dataset / "landmarks" / "0.lms").write_text("\n".join(lines))


def break_nan(dataset: Path) -> None:
    lines = lms_lines(68).splitlines()
    lines[30] = "nan 5.0"
    (dataset / "landmarks" / "2.lms").write_text("\n".join(lines))


def break_narrow_box(dataset: Path) -> None:
    move_box(dataset, 1, 100.0, 50.0, 100.9)  # xmax truncates to xmin: width 0


def break_no_frames_folder(dataset: Path) -> None:
    for path in (dataset / "full_body_img").iterdir():
        path.unlink()
    (dataset / "full_body_img").rmdir()


def break_no_landmarks_folder(dataset: Path) -> None:
    for path in (dataset / "landmarks").iterdir():
        path.unlink()
    (dataset / "landmarks").rmdir()


def break_numbering_from_1(dataset: Path) -> None:
    frames = dataset / "full_body_img"
    for i in reversed(range(COUNT)):
        (frames / f"{i}.jpg").rename(frames / f"{i + 1}.jpg")


DATASET_ERRORS = [
    ("missing landmark file", break_missing_file, ["1 landmark file(s) are missing", "2.lms"]),
    ("extra landmark file", break_extra_file, ["1 landmark file(s) have no frame", "9.lms"]),
    ("67 lines", break_line_count, ["1.lms has 67 lines", "expected 68"]),
    ("empty file", break_empty_file, ["1.lms has 0 lines"]),
    ("unparsable line", break_unparsable_line, ["3.lms, line 12", "'12.0 abc'"]),
    ("three numbers", break_three_numbers, ["0.lms, line 5", "'1.0 2.0 3.0'"]),
    ("NaN coordinate", break_nan, ["2.lms, line 31", "finite"]),
    ("box narrower than 2 pixels", break_narrow_box, ["1.lms", "frame 1", "0 pixels wide"]),
    ("no full_body_img folder", break_no_frames_folder, ["has no full_body_img/ folder"]),
    ("no landmarks folder", break_no_landmarks_folder, ["has no landmarks/ folder"]),
    ("frames numbered from 1", break_numbering_from_1, ["numbered from 0", "1.jpg"]),
]


@pytest.mark.parametrize(
    "damage, words", [case[1:] for case in DATASET_ERRORS], ids=[case[0] for case in DATASET_ERRORS]
)
def test_dataset_error_names_file(dataset, unet, tmp_path, damage, words):
    damage(dataset)

    with pytest.raises(FailedPrecondition) as caught:
        import_dataset(dataset, unet, tmp_path / "avatars", out_of_frame="clip")

    for word in words:
        assert word in str(caught.value)
    assert not (tmp_path / "avatars" / "imported").exists()


def test_invalid_out_of_frame_mode(dataset, unet, tmp_path):
    with pytest.raises(ValueError, match="out_of_frame 'wrap' is invalid"):
        import_dataset(dataset, unet, tmp_path / "avatars", out_of_frame="wrap")


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync", "avatar", "import", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_imports_dataset(dataset, unet, tmp_path):
    move_box(dataset, 2, 250.5, 100.0, 330.2)
    avatars = tmp_path / "avatars"
    common = ["--id", "alice", "--dataset", str(dataset), "--unet", str(unet)]

    rejected = run_cli(*common, "--avatars-dir", str(avatars))
    assert rejected.returncode == 1
    assert "frame 2 [250, 100, 330, 180] leaves the 320x240 frame" in rejected.stderr
    assert "Traceback" not in rejected.stderr

    result = run_cli(
        *common,
        "--avatars-dir",
        str(avatars),
        "--out-of-frame",
        "clip",
        "--face-interpolation",
        "linear",
    )
    assert result.returncode == 0, result.stderr
    assert "imported avatar 'alice'" in result.stdout
    assert "4 frames, 1 face boxes clipped" in result.stdout
    assert "clipped the face boxes of 1 of 4 frames" in result.stderr
    spec = yaml.safe_load((avatars / "alice" / "avatar.yaml").read_text())
    assert spec["face_interpolation"] == "linear"


def test_cli_help_names_reference_interpolation():
    result = run_cli("--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "linear reproduces SyncTalk_2D's inference_328.py" in help_text
    assert "(default: cubic)" in help_text
