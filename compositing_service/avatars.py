"""The compositing tier's avatars: decoded backgrounds, face boxes and 328x328 working crops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from compositing_service.jpeg_splice import SplicedBackground
from lipsync.avatar.backgrounds import iter_backgrounds, numbered_images
from lipsync.avatar.geometry import crop_face, load_crop_rects
from lipsync.avatar.spec import (
    CROP_SIZE,
    INTERPOLATIONS,
    AvatarSpec,
    load_spec,
    resolve_avatar_dir,
    validate_avatar_id,
)
from lipsync.errors import FailedPrecondition
from lipsync.registry import ModelRegistry

logger = logging.getLogger(__name__)


@dataclass
class CompositingAvatar:
    """A loaded avatar as the compositing tier needs it; everything per frame is precomputed."""

    spec: AvatarSpec
    folder: Path
    boxes: np.ndarray  # int32 [N, 4] x1, y1, x2, y2 (exclusive)
    crops: np.ndarray  # uint8 [N, 328, 328, 3] BGR: each face box resized to 328x328
    loaded_unix_ms: int
    load_ms: float
    decoded: np.ndarray | None = None  # uint8 [N, H, W, 3] BGR, storage "decoded"
    encoded: list[bytes] | None = None  # one lossless image file per frame, storage "encoded"
    spliced: dict[tuple[int, int], SplicedBackground] = field(default_factory=dict)
    spliced_lock: threading.Lock = field(default_factory=threading.Lock)

    def spliced_background(self, index: int, quality: int) -> SplicedBackground:
        """Return the background's cached JPEG for splicing at quality, building it once."""
        key = (index, quality)
        spliced = self.spliced.get(key)
        if spliced is None:
            # Two threads may build the same entry at once; both results are identical.
            spliced = SplicedBackground.build(self.decoded[index], quality)
            with self.spliced_lock:
                self.spliced.setdefault(key, spliced)
        return spliced

    def background(self, index: int) -> np.ndarray:
        """Return background frame index as uint8 [H, W, 3] BGR (read-only for decoded storage)."""
        if self.decoded is not None:
            return self.decoded[index]
        return cv2.imdecode(np.frombuffer(self.encoded[index], np.uint8), cv2.IMREAD_COLOR)

    @property
    def memory_bytes(self) -> int:
        backgrounds = (
            self.decoded.nbytes if self.decoded is not None else sum(map(len, self.encoded))
        )
        cached_jpegs = sum(len(s.background_jpeg) for s in list(self.spliced.values()))
        return int(backgrounds + self.crops.nbytes + self.boxes.nbytes + cached_jpegs)


def load_compositing_avatar(
    avatars_dir: Path, avatar_id: str, storage: str = "decoded"
) -> CompositingAvatar:
    """Decode an avatar package's backgrounds and precompute its working crops.

    With storage "encoded" the backgrounds are kept as the package's image files (or, for a
    video source, as PNG re-encodes) and decoded for each output frame.
    """
    started = time.perf_counter()
    folder = resolve_avatar_dir(avatars_dir, avatar_id)
    spec = load_spec(folder)
    boxes = load_crop_rects(
        spec.path(folder, spec.crop_rects),
        frame_count=spec.frame_count,
        width=spec.width,
        height=spec.height,
    )
    source = spec.path(folder, spec.backgrounds)
    files = numbered_images(source) if source.is_dir() else None

    decoded = None
    encoded: list[bytes] | None = None
    if storage == "decoded":
        decoded = np.empty((spec.frame_count, spec.height, spec.width, 3), dtype=np.uint8)
    else:
        encoded = []
    crops = np.empty((spec.frame_count, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    interpolation = INTERPOLATIONS[spec.face_interpolation]
    count = 0
    for i, frame in enumerate(iter_backgrounds(source)):
        if i >= spec.frame_count or frame.shape != (spec.height, spec.width, 3):
            raise FailedPrecondition(
                f"avatar {avatar_id!r}: background frame {i} does not match avatar.yaml "
                f"({spec.frame_count} frames of {spec.width}x{spec.height})"
            )
        if decoded is not None:
            decoded[i] = frame
        elif files is not None and files[i].suffix.lower() == ".png":
            encoded.append(files[i].read_bytes())
        else:
            # JPEG files and video frames are kept as lossless PNG so every decode is exact.
            encoded.append(
                cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
            )
        crops[i] = crop_face(frame, boxes[i], interpolation)
        count = i + 1
    if count != spec.frame_count:
        raise FailedPrecondition(
            f"avatar {avatar_id!r}: {count} background frames, "
            f"but avatar.yaml declares {spec.frame_count}"
        )

    load_ms = (time.perf_counter() - started) * 1000
    avatar = CompositingAvatar(
        spec=spec,
        folder=folder,
        boxes=boxes,
        crops=crops,
        loaded_unix_ms=int(time.time() * 1000),
        load_ms=load_ms,
        decoded=decoded,
        encoded=encoded,
    )
    logger.info(
        "loaded avatar %s: %d backgrounds of %dx%d stored %s, %.0f MB, %.0f ms",
        avatar_id,
        spec.frame_count,
        spec.width,
        spec.height,
        storage,
        avatar.memory_bytes / 1e6,
        load_ms,
    )
    return avatar


class CompositingAvatars:
    """The compositing tier's loaded avatars, in a capacity-bounded ModelRegistry."""

    def __init__(
        self,
        avatars_dir: Path,
        *,
        max_models: int = 0,
        max_memory_bytes: int = 0,
        policy: str = "lru",
        storage: str = "decoded",
    ) -> None:
        self.avatars_dir = avatars_dir
        self.registry: ModelRegistry[CompositingAvatar] = ModelRegistry(
            lambda avatar_id: load_compositing_avatar(avatars_dir, avatar_id, storage),
            max_models=max_models,
            max_memory_bytes=max_memory_bytes,
            policy=policy,
            name="compositing avatars",
        )

    @contextmanager
    def acquire(self, avatar_id: str) -> Iterator[tuple[CompositingAvatar, float]]:
        """Use an avatar for the block (loading it if needed); yields it and its load time."""
        validate_avatar_id(avatar_id)
        with self.registry.acquire(avatar_id) as (avatar, load_ms):
            yield avatar, load_ms

    def get(self, avatar_id: str) -> tuple[CompositingAvatar, float]:
        """Load an avatar if needed and return it with its load time (0 if already loaded)."""
        validate_avatar_id(avatar_id)
        return self.registry.load(avatar_id)

    def loaded(self) -> list[CompositingAvatar]:
        return [entry.item for entry in self.registry.entries().values()]
