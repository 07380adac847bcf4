"""The inference tier's work, free of gRPC: audio -> mel -> features -> context -> UNet -> crops.

`InferenceCore.render_mouths` is what the gRPC handler calls, and what the monolithic mode calls
directly in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from inference_service.audio import AudioEncoding, decode_pcm, pad_to_frames
from inference_service.avatars import AvatarRegistry, InferenceAvatar
from inference_service.features import VIDEO_FPS, audio_context, mel_windows, pad_features
from inference_service.legacy_inputs import parse_audio_tensor, parse_face_inputs
from inference_service.mel import melspectrogram
from inference_service.models import AudioEncoder
from lipsync.avatar.spec import FACE_SIZE, background_index
from lipsync.errors import InvalidArgument

logger = logging.getLogger(__name__)

# The masked half of the face input blacks out rows 5..309 and columns 5..314 of the 320x320
# face, as SyncTalk_2D's cv2.rectangle(img, (5, 5, 310, 305)) does.
MASK_ROWS = slice(5, 310)
MASK_COLS = slice(5, 315)
DEFAULT_SAMPLE_RATE = 16000
# Audio of d seconds forms about 25 * d frames (K + 2); the margin covers the rounding.
MAX_FRAMES_MARGIN = 4


@dataclass(frozen=True)
class MouthRequest:
    """A request for mouth crops of an utterance, in the domain's own types."""

    avatar_id: str
    raw_audio: bytes
    sample_rate: int = DEFAULT_SAMPLE_RATE
    encoding: AudioEncoding = AudioEncoding.PCM_F32LE
    channels: int = 1
    start_frame: int = 0
    first_frame: int = 0
    frame_count: int = 0  # 0: to the end of the utterance
    pad_to_frames: int = 0
    face_inputs: bytes = b""  # legacy: float32 [frame_count, 6, 320, 320] from the client
    audio_features: bytes = b""  # legacy: one float32 audio tensor used for every frame


@dataclass
class MouthBatch:
    """Consecutive mouth crops of one UNet run."""

    frame_indices: np.ndarray  # int [B], positions in the utterance
    background_indices: np.ndarray  # int [B]
    crops: np.ndarray  # uint8 [B, 320, 320, 3] BGR
    utterance_frames: int
    audio_ms: float
    inference_ms: float
    model_load_ms: float
    gpu_id: int


def build_face_batch(
    faces: np.ndarray, channel_order: str, out: np.ndarray | None = None
) -> np.ndarray:
    """Build the UNet's face input from uint8 face crops.

    Parameters
    ----------
    faces : np.ndarray [B, 320, 320, 3] uint8, BGR
    channel_order : "bgr" or "rgb", the order the model was trained with

    Returns
    -------
    np.ndarray [B, 6, 320, 320] float32: the face /255, then the same with the mask rectangle zeroed
    """
    batch = len(faces)
    if out is None:
        out = np.empty((batch, 6, FACE_SIZE, FACE_SIZE), dtype=np.float32)
    chw = faces.transpose(0, 3, 1, 2)
    if channel_order == "rgb":
        chw = chw[:, ::-1]
    np.divide(chw, np.float32(255.0), out=out[:, :3], dtype=np.float32)
    out[:, 3:] = out[:, :3]
    out[:, 3:, MASK_ROWS, MASK_COLS] = 0.0
    return out


def mouths_from_output(output: np.ndarray, channel_order: str) -> np.ndarray:
    """Convert UNet output [B, 3, 320, 320] in [0, 1] to uint8 [B, 320, 320, 3] BGR crops.

    Values are scaled by 255 and truncated, as the reference's uint8 cast does.
    """
    scaled = np.clip(output * np.float32(255.0), 0.0, 255.0)
    hwc = scaled.transpose(0, 2, 3, 1)
    if channel_order == "rgb":
        hwc = hwc[..., ::-1]
    return np.ascontiguousarray(hwc, dtype=np.uint8)


class InferenceCore:
    """Audio pipeline, audio encoder and the avatar registry behind one call."""

    def __init__(
        self,
        *,
        audio_encoder: AudioEncoder,
        avatars: AvatarRegistry,
        batch_size: int,
        max_audio_seconds: float,
    ) -> None:
        self.audio_encoder = audio_encoder
        self.avatars = avatars
        self.batch_size = batch_size
        self.max_audio_seconds = max_audio_seconds

    def audio_features(self, request: MouthRequest, mel_pad_mode: str) -> np.ndarray:
        """Decode the request audio and return the padded features [K + 2, D] float32."""
        sample_rate = request.sample_rate or DEFAULT_SAMPLE_RATE
        y = decode_pcm(
            request.raw_audio,
            encoding=request.encoding,
            sample_rate=sample_rate,
            channels=request.channels or 1,
            max_seconds=self.max_audio_seconds,
        )
        if request.pad_to_frames > 0:
            y = pad_to_frames(y, request.pad_to_frames)
        mel = melspectrogram(y, pad_mode=mel_pad_mode)
        return pad_features(self.audio_encoder.encode(mel_windows(mel)))

    def render_mouths(self, request: MouthRequest) -> Iterator[MouthBatch]:
        """Render the requested frames of an utterance, one batch of crops at a time."""
        if request.start_frame < 0:
            raise InvalidArgument(
                f"start_frame_idx {request.start_frame} is negative: use 0 or more"
            )
        if request.first_frame < 0 or request.frame_count < 0 or request.pad_to_frames < 0:
            raise InvalidArgument(
                "first_frame, frame_count and pad_to_frames must be 0 or more, got "
                f"{request.first_frame}, {request.frame_count}, {request.pad_to_frames}"
            )
        # Checked before anything is allocated: padding or a legacy frame count this large
        # would allocate memory in proportion.
        max_frames = int(self.max_audio_seconds * VIDEO_FPS) + MAX_FRAMES_MARGIN
        for field, value in (
            ("first_frame", request.first_frame),
            ("frame_count", request.frame_count),
            ("pad_to_frames", request.pad_to_frames),
        ):
            if value > max_frames:
                raise InvalidArgument(
                    f"{field} {value} is out of range: an utterance has at most {max_frames} "
                    f"frames (limits.max_audio_seconds {self.max_audio_seconds:g} s at "
                    f"{VIDEO_FPS} fps)"
                )
        with self.avatars.acquire(request.avatar_id) as (avatar, load_ms):
            started = time.perf_counter()
            if request.audio_features:
                # The legacy tensor replaces the audio pipeline; the batch size sets the length.
                if request.frame_count <= 0:
                    raise InvalidArgument(
                        "audio_features needs frame_count (batch_size) of 1 or more"
                    )
                tensor = parse_audio_tensor(request.audio_features, avatar.unet.audio_shape)
                total = request.frame_count

                def audio_for(indices: np.ndarray) -> np.ndarray:
                    return np.ascontiguousarray(
                        np.broadcast_to(tensor, (len(indices), *tensor.shape))
                    )

            else:
                padded = self.audio_features(request, avatar.spec.mel_pad_mode)
                total = len(padded)

                def audio_for(indices: np.ndarray) -> np.ndarray:
                    return audio_context(padded, indices, shape=avatar.unet.audio_shape)

            audio_ms = (time.perf_counter() - started) * 1000

            first = request.first_frame
            count = request.frame_count or max(total - first, 0)
            if first >= total or first + count > total:
                raise InvalidArgument(
                    f"frames [{first}, {first + count}) requested but the utterance has {total} "
                    f"frames (frame indices 0-{total - 1})"
                )
            faces = parse_face_inputs(request.face_inputs, count) if request.face_inputs else None

            frames = np.arange(first, first + count)
            batches = self._render_frames(
                avatar, frames, audio_for, faces, request.start_frame, total, audio_ms, load_ms
            )
            for batch in batches:
                self.avatars.registry.record_inference(request.avatar_id, batch.inference_ms)
                yield batch

    def _render_frames(
        self,
        avatar: InferenceAvatar,
        frames: np.ndarray,
        audio_for: Callable[[np.ndarray], np.ndarray],
        faces: np.ndarray | None,
        start_frame: int,
        total: int,
        audio_ms: float,
        load_ms: float,
    ) -> Iterator[MouthBatch]:
        spec = avatar.spec
        face_buffer = np.empty((self.batch_size, 6, FACE_SIZE, FACE_SIZE), dtype=np.float32)
        for offset in range(0, len(frames), self.batch_size):
            started = time.perf_counter()
            indices = frames[offset : offset + self.batch_size]
            backgrounds = np.array(
                [background_index(start_frame + int(i), spec.frame_count) for i in indices]
            )
            if faces is None:
                face = build_face_batch(
                    avatar.face_inputs[backgrounds], spec.channel_order, face_buffer[: len(indices)]
                )
            else:
                face = np.ascontiguousarray(faces[offset : offset + len(indices)])
            crops = mouths_from_output(
                avatar.unet.run(face, audio_for(indices)), spec.channel_order
            )
            yield MouthBatch(
                frame_indices=indices,
                background_indices=backgrounds,
                crops=crops,
                utterance_frames=total,
                audio_ms=audio_ms if offset == 0 else 0.0,
                inference_ms=(time.perf_counter() - started) * 1000,
                model_load_ms=load_ms if offset == 0 else 0.0,
                gpu_id=avatar.gpu_id,
            )

    def warm_up(self, avatar_id: str) -> None:
        """Run the audio encoder and the avatar's UNet once at batch 1 and at full batch."""
        silence = np.zeros(16000, dtype=np.float32).tobytes()
        for frames in (1, self.batch_size):
            request = MouthRequest(
                avatar_id=avatar_id, raw_audio=silence, frame_count=frames, pad_to_frames=frames
            )
            for _ in self.render_mouths(request):
                pass
        logger.info("warmed up avatar %s at batch sizes 1 and %d", avatar_id, self.batch_size)
