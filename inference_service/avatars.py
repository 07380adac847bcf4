"""The inference tier's avatars: each avatar's UNet session and its memory-mapped face inputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_service.models import UNet
from lipsync.avatar.spec import (
    FACE_SIZE,
    AvatarSpec,
    load_spec,
    resolve_avatar_dir,
    validate_avatar_id,
)
from lipsync.errors import FailedPrecondition
from lipsync.registry import LoadOnceCache

logger = logging.getLogger(__name__)


@dataclass
class InferenceAvatar:
    """A loaded avatar as the inference tier needs it."""

    spec: AvatarSpec
    folder: Path
    unet: UNet
    face_inputs: np.ndarray  # uint8 [N, 320, 320, 3] BGR, memory-mapped
    gpu_id: int
    loaded_unix_ms: int
    load_ms: float


def load_face_inputs(path: Path, spec: AvatarSpec) -> np.ndarray:
    """Memory-map face_inputs.npy and check it against the spec."""
    try:
        faces = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read face inputs {path}: {exc}") from exc
    expected = (spec.frame_count, FACE_SIZE, FACE_SIZE, 3)
    if faces.dtype != np.uint8 or faces.shape != expected:
        raise FailedPrecondition(
            f"{path} is {faces.dtype} {list(faces.shape)}, expected uint8 {list(expected)}; "
            "rebuild the avatar with `lipsync avatar build`"
        )
    return faces


class AvatarRegistry:
    """Load avatars by id on first use and keep them; concurrent first uses share one load."""

    def __init__(self, avatars_dir: Path, create_unet: Callable[[Path], tuple[UNet, int]]) -> None:
        self.avatars_dir = avatars_dir
        self._create_unet = create_unet
        self._cache: LoadOnceCache[InferenceAvatar] = LoadOnceCache(self._load)

    def get(self, avatar_id: str) -> tuple[InferenceAvatar, float]:
        """Return the avatar and the milliseconds spent loading it for this call (0 if cached)."""
        validate_avatar_id(avatar_id)
        avatar, loaded_now = self._cache.get(avatar_id)
        return avatar, avatar.load_ms if loaded_now else 0.0

    def loaded(self) -> list[InferenceAvatar]:
        return self._cache.values()

    def _load(self, avatar_id: str) -> InferenceAvatar:
        folder = resolve_avatar_dir(self.avatars_dir, avatar_id)
        started = time.perf_counter()
        spec = load_spec(folder)
        if spec.id != avatar_id:
            raise FailedPrecondition(
                f"{folder}/avatar.yaml has id {spec.id!r} but its folder is named {avatar_id!r}"
            )
        faces = load_face_inputs(spec.path(folder, spec.face_inputs), spec)
        unet, gpu_id = self._create_unet(spec.path(folder, spec.unet))
        load_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "loaded avatar %s: %d frames, UNet audio input %s, %.0f ms",
            avatar_id,
            spec.frame_count,
            list(unet.audio_shape),
            load_ms,
        )
        return InferenceAvatar(
            spec=spec,
            folder=folder,
            unet=unet,
            face_inputs=faces,
            gpu_id=gpu_id,
            loaded_unix_ms=int(time.time() * 1000),
            load_ms=load_ms,
        )
