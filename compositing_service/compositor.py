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
    crop : np.ndarray [328, 328, 3] uint8 BGR, the face box resized to 328x328
    box : (x1, y1, x2, y2), x2 and y2 exclusive
    mouth : np.ndarray [320, 320, 3] uint8 BGR, the UNet output

    Returns
    -------
    np.ndarray [H, W, 3] uint8 BGR: a new frame with the mouth crop placed in the centre of the
    328x328 crop, the crop resized back to the box (bicubic by default) and pasted at the box.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    working = crop.copy()
    working[CROP_MARGIN : CROP_MARGIN + FACE_SIZE, CROP_MARGIN : CROP_MARGIN + FACE_SIZE] = mouth
    face = cv2.resize(working, (x2 - x1, y2 - y1), interpolation=interpolation)
    frame = background.copy()
    frame[y1:y2, x1:x2] = face
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
    """Composite and encode batches of frames in parallel, keeping frame order."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="composite")

    def _one(
        self,
        avatar: CompositingAvatar,
        background_index: int,
        mouth: np.ndarray,
        output_format: str,
        jpeg_quality: int,
    ) -> bytes:
        frame = composite_frame(
            avatar.background(background_index),
            avatar.crops[background_index],
            avatar.boxes[background_index],
            mouth,
            INTERPOLATIONS[avatar.spec.face_interpolation],
        )
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
