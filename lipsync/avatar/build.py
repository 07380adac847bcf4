"""`lipsync avatar build`: turn a video or numbered frames plus face boxes into an avatar package.

Everything a request handler would otherwise recompute is precomputed here: the backgrounds are
stored as numbered images both tiers decode identically, and the UNet's uint8 face inputs are
saved as one .npy file the inference tier memory-maps.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from lipsync.avatar.backgrounds import iter_backgrounds, numbered_images, read_image
from lipsync.avatar.geometry import crop_face, face_from_crop, validate_boxes
from lipsync.avatar.spec import (
    FACE_SIZE,
    INTERPOLATIONS,
    AvatarSpec,
    validate_avatar_id,
    write_spec,
)
from lipsync.errors import FailedPrecondition

logger = logging.getLogger(__name__)

UNET_INPUTS = {"input": 6, "audio": None}
UNET_OUTPUT = "output"


def check_unet_contract(path: Path) -> None:
    """Check that an ONNX file has the SyncTalk_2D UNet's inputs and output."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise FailedPrecondition(f"cannot read UNet {path}: {exc}") from exc

    inputs = {i.name: i for i in model.graph.input}
    missing = [name for name in UNET_INPUTS if name not in inputs]
    if missing:
        raise FailedPrecondition(
            f"UNet {path} lacks input(s) {missing}; it has {sorted(inputs)} "
            "(expected 'input' [B,6,320,320] and 'audio')"
        )
    dims = [d.dim_value for d in inputs["input"].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1:] not in ([6, FACE_SIZE, FACE_SIZE], [0, 0, 0]):
        raise FailedPrecondition(
            f"UNet {path}: input 'input' has shape {dims}, expected [B,6,320,320]"
        )
    outputs = [o.name for o in model.graph.output]
    if UNET_OUTPUT not in outputs:
        raise FailedPrecondition(f"UNet {path} lacks output 'output'; it has {outputs}")


def _write_frame(path: Path, frame: np.ndarray, jpeg_quality: int) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), frame, params):
        raise FailedPrecondition(f"cannot write {path}")


def build_avatar(
    avatars_dir: Path,
    avatar_id: str,
    *,
    backgrounds: Path,
    crop_rects: Path | np.ndarray,
    unet: Path,
    channel_order: str = "bgr",
    mel_pad_mode: str = "constant",
    face_interpolation: str = "cubic",
    frame_format: str = "png",
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Build the package avatars_dir/avatar_id and return its folder.

    Parameters
    ----------
    backgrounds : a folder of numbered images or a video file
    crop_rects : crop_rects.json, or an array [N, 4] of (x1, y1, x2, y2) per frame
    unet : the avatar's UNet ONNX file, copied into the package
    frame_format : "png" (lossless) or "jpg" for the stored backgrounds
    """
    validate_avatar_id(avatar_id, field="avatar id")
    if frame_format not in ("png", "jpg"):
        raise ValueError(f"frame_format {frame_format!r} is invalid: use 'png' or 'jpg'")
    check_unet_contract(unet)

    target = avatars_dir / avatar_id
    if target.exists() and not overwrite:
        raise FailedPrecondition(f"{target} already exists; pass overwrite to replace it")

    if isinstance(crop_rects, Path):
        source_name = str(crop_rects)
        try:
            boxes_raw = np.array(json.loads(crop_rects.read_text(encoding="utf-8")), np.float64)
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot read face boxes {crop_rects}: {exc}") from exc
    else:
        source_name = "crop_rects"
        boxes_raw = np.asarray(crop_rects, dtype=np.float64)

    avatars_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{avatar_id}.", dir=avatars_dir))
    try:
        frames_dir = staging / "frames"
        frames_dir.mkdir()
        count, width, height = 0, 0, 0
        for i, frame in enumerate(iter_backgrounds(backgrounds)):
            if i == 0:
                height, width = frame.shape[:2]
            elif frame.shape[:2] != (height, width):
                raise FailedPrecondition(
                    f"background frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"frame 0 is {width}x{height}"
                )
            _write_frame(frames_dir / f"{i:06d}.{frame_format}", frame, jpeg_quality)
            count = i + 1
        if count == 0:
            raise FailedPrecondition(f"{backgrounds} contains no frames")

        boxes = validate_boxes(boxes_raw, width=width, height=height, source=source_name)
        if len(boxes) != count:
            raise FailedPrecondition(
                f"{source_name}: {len(boxes)} face boxes for {count} background frames"
            )

        # Face inputs come from the stored frames, decoded the way the compositing tier decodes
        # them, so both tiers agree even when the stored frames are lossy JPEG.
        face_inputs = np.lib.format.open_memmap(
            staging / "face_inputs.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(count, FACE_SIZE, FACE_SIZE, 3),
        )
        for i, path in enumerate(numbered_images(frames_dir)):
            face_inputs[i] = face_from_crop(
                crop_face(read_image(path), boxes[i], INTERPOLATIONS[face_interpolation])
            )
        face_inputs.flush()
        del face_inputs

        (staging / "crop_rects.json").write_text(json.dumps(boxes.tolist()), encoding="utf-8")
        shutil.copyfile(unet, staging / "unet.onnx")
        spec = AvatarSpec(
            id=avatar_id,
            width=width,
            height=height,
            frame_count=count,
            channel_order=channel_order,
            mel_pad_mode=mel_pad_mode,
            face_interpolation=face_interpolation,
        )
        write_spec(staging, spec)

        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info(
        "built avatar %s: %d frames of %dx%d in %s", avatar_id, count, width, height, target
    )
    return target
