"""The inference tier's avatars: each avatar's UNet session and its memory-mapped face inputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from lipsync.memory import rss_bytes
from lipsync.registry import ModelRegistry

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
    session_bytes: int = 0

    @property
    def memory_bytes(self) -> int:
        """Face inputs plus the measured growth of the process while the UNet session was made."""
        return int(self.face_inputs.nbytes + self.session_bytes)


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
    """The inference tier's loaded avatars, in a capacity-bounded ModelRegistry."""

    def __init__(
        self,
        avatars_dir: Path,
        create_unet: Callable[[str, Path], tuple[UNet, int]],
        *,
        max_models: int = 0,
        max_memory_bytes: int = 0,
        policy: str = "lru",
    ) -> None:
        self.avatars_dir = avatars_dir
        self._create_unet = create_unet
        self.registry: ModelRegistry[InferenceAvatar] = ModelRegistry(
            self._load,
            max_models=max_models,
            max_memory_bytes=max_memory_bytes,
            policy=policy,
            name="inference avatars",
        )

    @contextmanager
    def acquire(self, avatar_id: str) -> Iterator[tuple[InferenceAvatar, float]]:
        """Use an avatar for the block (loading it if needed); yields it and its load time."""
        validate_avatar_id(avatar_id)
        with self.registry.acquire(avatar_id) as (avatar, load_ms):
            yield avatar, load_ms

    def get(self, avatar_id: str) -> tuple[InferenceAvatar, float]:
        """Load an avatar if needed and return it with its load time (0 if already loaded)."""
        validate_avatar_id(avatar_id)
        return self.registry.load(avatar_id)

    def loaded(self) -> list[InferenceAvatar]:
        return [entry.item for entry in self.registry.entries().values()]

    def _load(self, avatar_id: str) -> InferenceAvatar:
        folder = resolve_avatar_dir(self.avatars_dir, avatar_id)
        started = time.perf_counter()
        spec = load_spec(folder)
        if spec.id != avatar_id:
            raise FailedPrecondition(
                f"{folder}/avatar.yaml has id {spec.id!r} but its folder is named {avatar_id!r}"
            )
        faces = load_face_inputs(spec.path(folder, spec.face_inputs), spec)
        rss_before = rss_bytes()
        unet, gpu_id = self._create_unet(avatar_id, spec.path(folder, spec.unet))
        session_bytes = max(rss_bytes() - rss_before, spec.path(folder, spec.unet).stat().st_size)
        load_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "loaded avatar %s: %d frames, UNet audio input %s, device %s, %.0f ms",
            avatar_id,
            spec.frame_count,
            list(unet.audio_shape),
            "cpu" if gpu_id < 0 else f"gpu {gpu_id}",
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
            session_bytes=session_bytes,
        )
