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
    __slots__ = ("model_id", "raw_audio", "sample_rate", "audio_encoding", "audio_channels", "start_frame_idx", "first_frame", "frame_count", "pad_to_frames", "face_inputs", "audio_features")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAD_TO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FACE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    raw_audio: bytes
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    start_frame_idx: int
    first_frame: int
    frame_count: int
    pad_to_frames: int
    face_inputs: bytes
    audio_features: bytes
    def __init__(self, model_id: _Optional[str] = ..., raw_audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., pad_to_frames: _Optional[int] = ..., face_inputs: _Optional[bytes] = ..., audio_features: _Optional[bytes] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("model_id", "sample_rate", "audio_encoding", "audio_channels", "start_frame_idx", "lookahead_rows", "paced")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    PACED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    start_frame_idx: int
    lookahead_rows: int
    paced: bool
    def __init__(self, model_id: _Optional[str] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., lookahead_rows: _Optional[int] = ..., paced: _Optional[bool] = ...) -> None: ...

class StreamAudio(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class StreamInterrupt(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamMouthsRequest(_message.Message):
    __slots__ = ("start", "audio", "interrupt")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    audio: StreamAudio
    interrupt: StreamInterrupt
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., audio: _Optional[_Union[StreamAudio, _Mapping]] = ..., interrupt: _Optional[_Union[StreamInterrupt, _Mapping]] = ...) -> None: ...

class MouthCrop(_message.Message):
    __slots__ = ("frame_index", "background_index", "pixels", "silence_fill")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    SILENCE_FILL_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    background_index: int
    pixels: bytes
    silence_fill: bool
    def __init__(self, frame_index: _Optional[int] = ..., background_index: _Optional[int] = ..., pixels: _Optional[bytes] = ..., silence_fill: _Optional[bool] = ...) -> None: ...

class RenderMouthsResponse(_message.Message):
    __slots__ = ("crops", "utterance_frames", "audio_ms", "inference_ms", "model_load_ms", "gpu_id", "session_id")
    CROPS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    crops: _containers.RepeatedCompositeFieldContainer[MouthCrop]
    utterance_frames: int
    audio_ms: float
    inference_ms: float
    model_load_ms: float
    gpu_id: int
    session_id: str
    def __init__(self, crops: _Optional[_Iterable[_Union[MouthCrop, _Mapping]]] = ..., utterance_frames: _Optional[int] = ..., audio_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., model_load_ms: _Optional[float] = ..., gpu_id: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

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

class ModelStats(_message.Message):
    __slots__ = ("usage_count", "last_used_unix_ms", "total_inference_time_ms", "memory_bytes", "loaded_unix_ms", "active_users")
    USAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_USERS_FIELD_NUMBER: _ClassVar[int]
    usage_count: int
    last_used_unix_ms: int
    total_inference_time_ms: float
    memory_bytes: int
    loaded_unix_ms: int
    active_users: int
    def __init__(self, usage_count: _Optional[int] = ..., last_used_unix_ms: _Optional[int] = ..., total_inference_time_ms: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., loaded_unix_ms: _Optional[int] = ..., active_users: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "loaded", "model_path", "gpu_id", "stats")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    loaded: bool
    model_path: str
    gpu_id: int
    stats: ModelStats
    def __init__(self, model_id: _Optional[str] = ..., loaded: _Optional[bool] = ..., model_path: _Optional[str] = ..., gpu_id: _Optional[int] = ..., stats: _Optional[_Union[ModelStats, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id", "force_reload")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_RELOAD_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    force_reload: bool
    def __init__(self, model_id: _Optional[str] = ..., force_reload: _Optional[bool] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("load_time_ms", "model")
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    load_time_ms: float
    model: ModelInfo
    def __init__(self, load_time_ms: _Optional[float] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...

class GetModelStatsRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelStatsResponse(_message.Message):
    __slots__ = ("models", "max_models", "loaded_models", "total_memory_bytes", "max_memory_bytes", "active_streams")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    max_models: int
    loaded_models: int
    total_memory_bytes: int
    max_memory_bytes: int
    active_streams: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., max_models: _Optional[int] = ..., loaded_models: _Optional[int] = ..., total_memory_bytes: _Optional[int] = ..., max_memory_bytes: _Optional[int] = ..., active_streams: _Optional[int] = ...) -> None: ...
