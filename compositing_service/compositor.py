"""Compositing mouth crops into background frames and encoding them, on a pool of threads.

OpenCV's resize, imencode and numpy's copies release the GIL, so the pool uses every core.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from compositing_service.avatars import CompositingAvatar
from lipsync.avatar.spec import CROP_MARGIN, FACE_SIZE, INTERPOLATIONS

JPEG = "jpeg"
PNG = "png"


def face_patch(
    crop: np.ndarray,
    box: np.ndarray,
    mouth: np.ndarray,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Place a mouth crop in the centre of the 328x328 crop and resize it back to the box.

    Parameters
    ----------
    crop : np.ndarray [328, 328, 3] uint8 BGR, the face box resized to 328x328
    box : (x1, y1, x2, y2), x2 and y2 exclusive
    mouth : np.ndarray [320, 320, 3] uint8 BGR, the UNet output

    Returns
    -------
    np.ndarray [y2 - y1, x2 - x1, 3] uint8 BGR, the pixels to paste at the box
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    working = crop.copy()
    working[CROP_MARGIN : CROP_MARGIN + FACE_SIZE, CROP_MARGIN : CROP_MARGIN + FACE_SIZE] = mouth
    return cv2.resize(working, (x2 - x1, y2 - y1), interpolation=interpolation)


def composite_frame(
    background: np.ndarray,
    crop: np.ndarray,
    box: np.ndarray,
    mouth: np.ndarray,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Paste a mouth crop into a background frame the way the reference does.

    Parameters
    ----------
    background : np.ndarray [H, W, 3] uint8 BGR, left unchanged
    crop, box, mouth : as in `face_patch`

    Returns
    -------
    np.ndarray [H, W, 3] uint8 BGR: a new frame with the face patch pasted at the box.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    frame = background.copy()
    frame[y1:y2, x1:x2] = face_patch(crop, box, mouth, interpolation)
    return frame


def encode_frame(frame: np.ndarray, output_format: str, jpeg_quality: int) -> bytes:
    """Encode a BGR frame as JPEG (4:2:0) or PNG."""
    if output_format == PNG:
        ok, data = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {frame.shape} frame as {output_format}")
    return data.tobytes()


class Compositor:
    """Composite and encode batches of frames in parallel, keeping frame order.

    With `jpeg_mode` "splice", JPEG frames of avatars whose backgrounds are held decoded are
    made by re-encoding only the MCU rows around the face box and splicing them into the
    background's cached JPEG (see jpeg_splice). The result is byte-identical to a full-frame
    encode with the same restart interval. "full" encodes every frame whole.
    """

    def __init__(self, workers: int = 0, jpeg_mode: str = "splice") -> None:
        self.workers = workers or os.cpu_count() or 1
        self.jpeg_mode = jpeg_mode
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="composite")

    def _one(
        self,
        avatar: CompositingAvatar,
        background_index: int,
        mouth: np.ndarray,
        output_format: str,
        jpeg_quality: int,
    ) -> bytes:
        box = avatar.boxes[background_index]
        patch = face_patch(
            avatar.crops[background_index],
            box,
            mouth,
            INTERPOLATIONS[avatar.spec.face_interpolation],
        )
        if output_format == JPEG and self.jpeg_mode == "splice" and avatar.decoded is not None:
            spliced = avatar.spliced_background(background_index, jpeg_quality)
            return spliced.encode_patch(patch, int(box[0]), int(box[1]))

        frame = avatar.background(background_index).copy()
        x1, y1, x2, y2 = (int(v) for v in box)
        frame[y1:y2, x1:x2] = patch
        return encode_frame(frame, output_format, jpeg_quality)

    def render(
        self,
        avatar: CompositingAvatar,
        background_indices: np.ndarray,
        mouths: np.ndarray,
        *,
        output_format: str,
        jpeg_quality: int,
    ) -> list[bytes]:
        """Return one encoded frame per mouth crop [B, 320, 320, 3], in order."""
        jobs = [
            self._pool.submit(self._one, avatar, int(b), mouth, output_format, jpeg_quality)
            for b, mouth in zip(background_indices, mouths, strict=True)
        ]
        return [job.result() for job in jobs]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
