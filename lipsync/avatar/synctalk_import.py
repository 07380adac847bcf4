"""`lipsync avatar import`: turn a SyncTalk_2D dataset folder and its UNet into an avatar package.

A SyncTalk_2D dataset folder contains ``full_body_img/N.jpg`` (frames numbered from 0) and
``landmarks/N.lms`` (68 lines ``"x y"`` of float pixel coordinates per frame). The face box of
each frame is computed exactly as SyncTalk_2D's ``inference_328.py`` computes it: the landmarks
are parsed as float32 and cast to int32 (truncation toward zero), and

    xmin = lms[1][0], ymin = lms[52][1], xmax = lms[31][0], ymax = ymin + (xmax - xmin)

gives the box ``[xmin, ymin, xmax, ymax]`` with ``xmax`` and ``ymax`` exclusive.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lipsync.avatar.backgrounds import numbered_images
from lipsync.avatar.build import build_avatar
from lipsync.errors import FailedPrecondition

logger = logging.getLogger(__name__)

FRAMES_DIR = "full_body_img"
LANDMARKS_DIR = "landmarks"
LANDMARK_SUFFIX = ".lms"
LANDMARK_COUNT = 68
OUT_OF_FRAME_MODES = ("reject", "clip")

# Indices into the 68-point landmarks that inference_328.py builds the face box from.
LEFT_CHEEK = 1
NOSE_TIP = 31
UPPER_LIP = 52


@dataclass(frozen=True)
class ImportResult:
    """The package built from a dataset and the frames whose face box was clipped."""

    folder: Path
    frame_count: int
    boxes: np.ndarray  # int32 [N, 4] x1, y1, x2, y2 (exclusive), as stored in crop_rects.json
    clipped_frames: list[int] = field(default_factory=list)


def read_landmarks(path: Path) -> np.ndarray:
    """Read a SyncTalk_2D ``.lms`` file the way ``inference_328.py`` does.

    Parameters
    ----------
    path : Path
        68 lines, each two numbers ``x y`` separated by whitespace. Trailing blank lines are
        ignored.

    Returns
    -------
    np.ndarray [68, 2], int32
        The coordinates parsed as float32 and truncated toward zero, like
        ``np.array(rows, dtype=np.float32).astype(np.int32)``. The float32 step matters:
        99.99999999 becomes 100.0 in float32 and then 100, not 99.

    Raises
    ------
    FailedPrecondition
        If the file cannot be read, has another number of lines, or a line is not two finite
        numbers. The message names the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"cannot read landmark file {path}: {exc}") from exc

    lines = text.rstrip().splitlines()
    if len(lines) != LANDMARK_COUNT:
        raise FailedPrecondition(
            f"landmark file {path} has {len(lines)} lines, expected {LANDMARK_COUNT} "
            "(one 'x y' pair per landmark)"
        )

    rows = []
    for number, line in enumerate(lines, start=1):
        values = line.split()
        try:
            row = [float(value) for value in values]
        except ValueError:
            row = []
        if len(row) != 2 or not all(math.isfinite(value) for value in row):
            raise FailedPrecondition(
                f"landmark file {path}, line {number}: {line.strip()[:60]!r} is not two finite "
                "numbers 'x y'"
            )
        rows.append(row)

    return np.array(rows, dtype=np.float32).astype(np.int32)


def face_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """Compute inference_328.py's face box ``(xmin, ymin, xmax, ymax)`` from int landmarks [68, 2].

    The box is square: its height is the width between the left cheek (landmark 1) and the nose
    tip (landmark 31), measured down from the upper lip (landmark 52).
    """
    xmin = int(landmarks[LEFT_CHEEK][0])
    ymin = int(landmarks[UPPER_LIP][1])
    xmax = int(landmarks[NOSE_TIP][0])
    width = xmax - xmin
    ymax = ymin + width
    return xmin, ymin, xmax, ymax


def _landmark_paths(dataset: Path, frames: list[Path]) -> list[Path]:
    # Frame N.jpg pairs with landmarks/N.lms, as in inference_328.py.
    folder = dataset / LANDMARKS_DIR
    if not folder.is_dir():
        raise FailedPrecondition(f"dataset {dataset} has no {LANDMARKS_DIR}/ folder")

    expected = {folder / f"{int(frame.stem)}{LANDMARK_SUFFIX}" for frame in frames}
    present = {path for path in folder.iterdir() if path.suffix == LANDMARK_SUFFIX}
    missing = sorted(expected - present, key=lambda p: int(p.stem))
    if missing:
        raise FailedPrecondition(
            f"{len(missing)} landmark file(s) are missing, the first {missing[0]}: every frame "
            f"in {dataset / FRAMES_DIR} needs a landmark file of the same number"
        )
    extra = sorted(present - expected, key=lambda p: p.name)
    if extra:
        raise FailedPrecondition(
            f"{len(extra)} landmark file(s) have no frame, the first {extra[0]}: "
            f"{dataset / FRAMES_DIR} has frames 0-{len(frames) - 1}"
        )
    return [folder / f"{int(frame.stem)}{LANDMARK_SUFFIX}" for frame in frames]


def dataset_face_boxes(
    dataset: Path, *, width: int, height: int, out_of_frame: str = "reject"
) -> tuple[np.ndarray, list[int]]:
    """Compute the face box of every frame of a dataset from its landmark files.

    Parameters
    ----------
    dataset : Path
        The dataset folder, with ``full_body_img/`` and ``landmarks/``.
    width, height : int
        Frame size in pixels.
    out_of_frame : {"reject", "clip"}
        What to do with a box that leaves the frame. "reject" raises. "clip" clips it to the
        frame. For a box past the right or bottom edge this is what inference_328.py does
        implicitly, because NumPy slicing stops at the edge for both the crop and the paste.

    Returns
    -------
    boxes : np.ndarray [N, 4], int64
        ``[x1, y1, x2, y2]`` per frame, x2 and y2 exclusive.
    clipped : list of int
        Numbers of the frames whose box was clipped.

    Raises
    ------
    FailedPrecondition
        For a missing or extra landmark file, an unreadable one, a box narrower than 2
        pixels, or (with "reject") a box that leaves the frame.
    """
    if out_of_frame not in OUT_OF_FRAME_MODES:
        raise ValueError(
            f"out_of_frame {out_of_frame!r} is invalid: use one of {OUT_OF_FRAME_MODES}"
        )

    frames = _frame_paths(dataset)
    boxes = np.empty((len(frames), 4), dtype=np.int64)
    clipped = []
    for i, path in enumerate(_landmark_paths(dataset, frames)):
        x1, y1, x2, y2 = face_box(read_landmarks(path))
        if x2 - x1 < 2:
            raise FailedPrecondition(
                f"{path}: face box of frame {i} [{x1}, {y1}, {x2}, {y2}] is {x2 - x1} pixels "
                f"wide; landmark {NOSE_TIP} must lie at least 2 pixels right of landmark "
                f"{LEFT_CHEEK}"
            )

        inside = x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height
        if not inside and out_of_frame == "reject":
            raise FailedPrecondition(
                f"{path}: face box of frame {i} [{x1}, {y1}, {x2}, {y2}] leaves the "
                f"{width}x{height} frame. Fix the landmarks, or clip the boxes to the frame "
                "with --out-of-frame clip."
            )
        if not inside:
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
            clipped.append(i)
        boxes[i] = (x1, y1, x2, y2)
    return boxes, clipped


def _frame_paths(dataset: Path) -> list[Path]:
    folder = dataset / FRAMES_DIR
    if not folder.is_dir():
        raise FailedPrecondition(f"dataset {dataset} has no {FRAMES_DIR}/ folder")
    frames = numbered_images(folder)
    if int(frames[0].stem) != 0:
        raise FailedPrecondition(
            f"{folder}: SyncTalk_2D frames are numbered from 0, but the first is {frames[0].name}"
        )
    return frames


def import_synctalk_dataset(
    dataset: Path,
    *,
    unet: Path,
    avatars_dir: Path,
    avatar_id: str,
    out_of_frame: str = "reject",
    channel_order: str = "bgr",
    mel_pad_mode: str = "constant",
    face_interpolation: str = "cubic",
    frame_format: str = "png",
    overwrite: bool = False,
) -> ImportResult:
    """Build the avatar package ``avatars_dir/avatar_id`` from a SyncTalk_2D dataset folder.

    The face boxes come from `dataset_face_boxes`; everything else is `build_avatar`'s work.
    With the default PNG frame format the stored backgrounds are the decoded JPEG frames
    without further loss, so the package renders the pixels inference_328.py would.

    Parameters
    ----------
    dataset : Path
        Folder with ``full_body_img/`` and ``landmarks/``.
    unet : Path
        The UNet exported to ONNX (inputs ``input`` [B, 6, 320, 320] and ``audio``, output
        ``output``).
    out_of_frame : {"reject", "clip"}
        See `dataset_face_boxes`. Clipping is logged with the number of clipped frames.
    channel_order, mel_pad_mode, face_interpolation, frame_format, overwrite
        Passed to `build_avatar`. face_interpolation "linear" reproduces inference_328.py,
        whose ``cv2.resize(img, (328, 328), cv2.INTER_CUBIC)`` passes the flag where OpenCV
        expects ``dst``, so OpenCV interpolates bilinearly.

    Returns
    -------
    ImportResult
    """
    frames = _frame_paths(dataset)
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise FailedPrecondition(f"cannot decode image {frames[0]}")
    height, width = first.shape[:2]

    boxes, clipped = dataset_face_boxes(
        dataset, width=width, height=height, out_of_frame=out_of_frame
    )
    if clipped:
        logger.warning(
            "clipped the face boxes of %d of %d frames to the %dx%d frame (first: frame %d)",
            len(clipped),
            len(boxes),
            width,
            height,
            clipped[0],
        )

    folder = build_avatar(
        avatars_dir,
        avatar_id,
        backgrounds=dataset / FRAMES_DIR,
        crop_rects=boxes,
        unet=unet,
        channel_order=channel_order,
        mel_pad_mode=mel_pad_mode,
        face_interpolation=face_interpolation,
        frame_format=frame_format,
        overwrite=overwrite,
    )
    return ImportResult(
        folder=folder,
        frame_count=len(boxes),
        boxes=boxes.astype(np.int32),
        clipped_frames=clipped,
    )
