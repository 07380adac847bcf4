"""avatar.yaml: the description of one avatar package, and safe lookup of packages by id.

An avatar package is one folder named after the avatar id:

    <avatars_dir>/<id>/
        avatar.yaml          this file's schema (AvatarSpec)
        unet.onnx            the avatar's UNet (SyncTalk_2D contract)
        frames/000000.png    backgrounds, numbered from 0 (or one video file)
        crop_rects.json      [[x1, y1, x2, y2], ...], one face box per background frame
        face_inputs.npy      uint8 [N, 320, 320, 3] BGR face inputs, built by `lipsync avatar build`
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lipsync.errors import FailedPrecondition, InvalidArgument, NotFound

SPEC_FILE = "avatar.yaml"
AVATAR_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# The SyncTalk_2D "328" geometry: the face box is resized to CROP_SIZE, and the centre
# FACE_SIZE square (a CROP_MARGIN ring removed) is the UNet's face input and output.
CROP_SIZE = 328
FACE_SIZE = 320
CROP_MARGIN = 4


class AvatarSpec(BaseModel):
    """Contents of avatar.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    fps: int = Field(25, ge=1, le=120)
    width: int = Field(..., ge=16, le=8192, description="background frame width in pixels")
    height: int = Field(..., ge=16, le=8192, description="background frame height in pixels")
    frame_count: int = Field(..., ge=1, description="number of background frames")
    channel_order: Literal["bgr", "rgb"] = Field(
        "bgr", description="channel order the UNet was trained with (BGR for SyncTalk_2D)"
    )
    face_size: int = Field(FACE_SIZE, description="side of the UNet's square face input")
    loop_mode: Literal["pingpong"] = "pingpong"
    mel_pad_mode: Literal["constant", "reflect"] = Field(
        "constant", description="STFT padding the model was trained with"
    )
    face_interpolation: Literal["cubic", "linear"] = Field(
        "cubic",
        description=(
            "OpenCV interpolation of both face resizes. SyncTalk_2D's inference_328.py passes "
            "INTER_CUBIC positionally, where cv2.resize takes dst, so OpenCV uses INTER_LINEAR: "
            "'linear' reproduces that script's pixels"
        ),
    )
    unet: str = "unet.onnx"
    backgrounds: str = Field("frames", description="folder of numbered images, or a video file")
    crop_rects: str = "crop_rects.json"
    face_inputs: str = "face_inputs.npy"

    def path(self, root: Path, name: str) -> Path:
        """Resolve a file named in the spec against the package folder, refusing escapes."""
        resolved = (root / name).resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise FailedPrecondition(
                f"avatar '{self.id}': file '{name}' in {SPEC_FILE} points outside the package"
            )
        return resolved


INTERPOLATIONS = {"cubic": 2, "linear": 1}  # cv2.INTER_CUBIC, cv2.INTER_LINEAR


def validate_avatar_id(avatar_id: str, *, field: str = "model_id") -> str:
    """Check that an avatar id is a plain folder name and return it."""
    if not avatar_id:
        raise InvalidArgument(f"{field} is empty: name an avatar")
    if not AVATAR_ID_PATTERN.match(avatar_id) or ".." in avatar_id:
        raise InvalidArgument(
            f"{field} {avatar_id[:80]!r} is invalid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..'"
        )
    return avatar_id


def resolve_avatar_dir(avatars_dir: Path, avatar_id: str, *, field: str = "model_id") -> Path:
    """Return the package folder of an avatar id, which is always inside avatars_dir."""
    validate_avatar_id(avatar_id, field=field)
    root = avatars_dir.resolve()
    folder = (root / avatar_id).resolve()
    if folder.parent != root:
        raise InvalidArgument(f"{field} {avatar_id!r} does not name a folder in the avatars dir")
    if not (folder / SPEC_FILE).is_file():
        raise NotFound(f"avatar {avatar_id!r} not found: the avatars directory has no such package")
    return folder


def load_spec(folder: Path) -> AvatarSpec:
    """Read and validate avatar.yaml in a package folder."""
    path = folder / SPEC_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return AvatarSpec.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise FailedPrecondition(f"cannot read {path}: {exc}") from exc
    except ValidationError as exc:
        raise FailedPrecondition(f"invalid {path}: {exc}") from exc


def write_spec(folder: Path, spec: AvatarSpec) -> Path:
    """Write avatar.yaml into a package folder."""
    path = folder / SPEC_FILE
    path.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False), encoding="utf-8")
    return path


def background_index(position: int, frame_count: int) -> int:
    """Map a position in the ping-pong loop to a background frame index.

    The loop visits 0, 1, ..., N-1, N-2, ..., 1, 0, 1, ... so a long utterance never jumps.
    """
    if frame_count <= 1:
        return 0
    period = 2 * frame_count - 2
    phase = position % period
    return phase if phase < frame_count else period - phase
