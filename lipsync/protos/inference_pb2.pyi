from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM_S16LE: _ClassVar[AudioEncoding]
    PCM_F32LE: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding

class RenderMouthsRequest(_message.Message):
    __slots__ = ("model_id", "raw_audio", "sample_rate", "audio_encoding", "audio_channels", "start_frame_idx", "first_frame", "frame_count", "pad_to_frames")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAD_TO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    raw_audio: bytes
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    start_frame_idx: int
    first_frame: int
    frame_count: int
    pad_to_frames: int
    def __init__(self, model_id: _Optional[str] = ..., raw_audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., pad_to_frames: _Optional[int] = ...) -> None: ...

class MouthCrop(_message.Message):
    __slots__ = ("frame_index", "background_index", "pixels")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    background_index: int
    pixels: bytes
    def __init__(self, frame_index: _Optional[int] = ..., background_index: _Optional[int] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class RenderMouthsResponse(_message.Message):
    __slots__ = ("crops", "utterance_frames", "audio_ms", "inference_ms", "model_load_ms", "gpu_id")
    CROPS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    crops: _containers.RepeatedCompositeFieldContainer[MouthCrop]
    utterance_frames: int
    audio_ms: float
    inference_ms: float
    model_load_ms: float
    gpu_id: int
    def __init__(self, crops: _Optional[_Iterable[_Union[MouthCrop, _Mapping]]] = ..., utterance_frames: _Optional[int] = ..., audio_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., model_load_ms: _Optional[float] = ..., gpu_id: _Optional[int] = ...) -> None: ...

class DescribeAvatarRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DescribeAvatarResponse(_message.Message):
    __slots__ = ("model_id", "frame_count", "crop_size", "gpu_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    frame_count: int
    crop_size: int
    gpu_id: int
    def __init__(self, model_id: _Optional[str] = ..., frame_count: _Optional[int] = ..., crop_size: _Optional[int] = ..., gpu_id: _Optional[int] = ...) -> None: ...
