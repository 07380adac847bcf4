"""Face boxes and the SyncTalk_2D crop geometry, shared by the packaging command and both tiers."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from lipsync.avatar.spec import CROP_MARGIN, CROP_SIZE, FACE_SIZE
from lipsync.errors import FailedPrecondition


def validate_boxes(boxes: np.ndarray, *, width: int, height: int, source: str) -> np.ndarray:
    """Check face boxes [N, 4] (x1, y1, x2, y2; x2 and y2 exclusive) against the frame size.

    Returns the boxes as int32. Raises FailedPrecondition naming the first bad frame.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise FailedPrecondition(
            f"{source}: expected a list of [x1, y1, x2, y2] boxes, got shape {list(boxes.shape)}"
        )
    if not np.all(np.isfinite(boxes)) or not np.all(boxes == np.round(boxes)):
        bad = int(np.nonzero(~np.all(np.isfinite(boxes) & (boxes == np.round(boxes)), 1))[0][0])
        raise FailedPrecondition(f"{source}: box of frame {bad} has non-integer coordinates")

    boxes = boxes.astype(np.int64)
    x1, y1, x2, y2 = boxes.T
    bad_frames = np.nonzero((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height))[0]
    if bad_frames.size:
        i = int(bad_frames[0])
        raise FailedPrecondition(
            f"{source}: box of frame {i} {boxes[i].tolist()} leaves the {width}x{height} frame"
        )
    empty_frames = np.nonzero((x2 - x1 < 2) | (y2 - y1 < 2))[0]
    if empty_frames.size:
        i = int(empty_frames[0])
        raise FailedPrecondition(
            f"{source}: box of frame {i} {boxes[i].tolist()} is smaller than 2x2 pixels"
        )
    return boxes.astype(np.int32)


def load_crop_rects(path: Path, *, frame_count: int, width: int, height: int) -> np.ndarray:
    """Read crop_rects.json, one [x1, y1, x2, y2] per background frame, as int32 [N, 4]."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read face boxes {path}: {exc}") from exc

    boxes = validate_boxes(
        np.array(data, dtype=np.float64), width=width, height=height, source=str(path)
    )
    if len(boxes) != frame_count:
        raise FailedPrecondition(
            f"{path}: {len(boxes)} face boxes for {frame_count} background frames"
        )
    return boxes


def crop_face(
    frame: np.ndarray,
    box: np.ndarray | tuple[int, int, int, int],
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Crop a face box and resize it to the 328x328 working crop (bicubic by default).

    Parameters
    ----------
    frame : np.ndarray [H, W, 3] uint8
    box : (x1, y1, x2, y2), x2 and y2 exclusive

    Returns
    -------
    np.ndarray [328, 328, 3] uint8, same channel order as frame
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(frame[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=interpolation)


def face_from_crop(crop: np.ndarray) -> np.ndarray:
    """Return the centre 320x320 of a 328x328 crop: the UNet's face input, uint8 HWC."""
    return crop[CROP_MARGIN : CROP_MARGIN + FACE_SIZE, CROP_MARGIN : CROP_MARGIN + FACE_SIZE]
