"""Reading background frames from a folder of numbered images or from a video file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import FailedPrecondition

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def numbered_images(folder: Path) -> list[Path]:
    """List the images of a folder named by frame number (0.jpg, 000001.png, ...), in order."""
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    unnumbered = [p.name for p in images if not p.stem.isdigit()]
    if unnumbered:
        raise FailedPrecondition(
            f"{folder}: image names must be frame numbers, found {unnumbered[:3]}"
        )
    images.sort(key=lambda p: int(p.stem))
    numbers = [int(p.stem) for p in images]
    if not numbers:
        raise FailedPrecondition(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} frames found")
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    if numbers != expected or numbers[0] not in (0, 1):
        raise FailedPrecondition(
            f"{folder}: frames must be numbered consecutively from 0 or 1, "
            f"found {numbers[:3]}...{numbers[-1]} ({len(numbers)} files)"
        )
    return images


def read_image(path: Path) -> np.ndarray:
    """Decode one image file into uint8 [H, W, 3] BGR."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FailedPrecondition(f"cannot decode image {path}")
    return image


def iter_video_frames(path: Path) -> Iterator[np.ndarray]:
    """Decode every frame of a video file into uint8 [H, W, 3] BGR."""
    import av

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="bgr24")
    except av.FFmpegError as exc:
        raise FailedPrecondition(f"cannot decode video {path}: {exc}") from exc


def iter_backgrounds(source: Path) -> Iterator[np.ndarray]:
    """Yield the background frames of a folder of numbered images or of a video file, in order."""
    if source.is_dir():
        for path in numbered_images(source):
            yield read_image(path)
    elif source.suffix.lower() in VIDEO_SUFFIXES and source.is_file():
        yield from iter_video_frames(source)
    else:
        raise FailedPrecondition(
            f"backgrounds {source} is neither a folder of numbered images nor a "
            f"{'/'.join(VIDEO_SUFFIXES)} video file"
        )
