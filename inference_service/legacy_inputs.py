"""Inputs that legacy clients of the original API send: their own face inputs and audio tensors."""

from __future__ import annotations

import numpy as np

from lipsync.avatar.spec import FACE_SIZE
from lipsync.errors import InvalidArgument

FACE_INPUT_VALUES = 6 * FACE_SIZE * FACE_SIZE


def parse_face_inputs(data: bytes, frame_count: int, *, field: str = "face_inputs") -> np.ndarray:
    """Read client face inputs: float32 little-endian [frame_count, 6, 320, 320] (CHW per frame).

    Returns a read-only float32 array [frame_count, 6, 320, 320].
    """
    expected = frame_count * FACE_INPUT_VALUES * 4
    if len(data) != expected:
        raise InvalidArgument(
            f"{field} has {len(data)} bytes; {frame_count} frames of 6x320x320 float32 need "
            f"{expected} bytes ({FACE_INPUT_VALUES * 4} per frame)"
        )
    faces = np.frombuffer(data, dtype="<f4").reshape(frame_count, 6, FACE_SIZE, FACE_SIZE)
    if not np.isfinite(faces).all():
        raise InvalidArgument(f"{field} contains NaN or Inf values: send finite floats in [0, 1]")
    return faces


def parse_audio_tensor(data: bytes, shape: tuple[int, ...], *, field: str = "audio_features"):
    """Read one float32 little-endian audio tensor of the UNet's audio input shape."""
    values = int(np.prod(shape))
    if len(data) != values * 4:
        raise InvalidArgument(
            f"{field} has {len(data)} bytes; the avatar's UNet takes one float32 tensor of shape "
            f"{list(shape)} ({values * 4} bytes)"
        )
    tensor = np.frombuffer(data, dtype="<f4").reshape(shape)
    if not np.isfinite(tensor).all():
        raise InvalidArgument(f"{field} contains NaN or Inf values")
    return tensor
