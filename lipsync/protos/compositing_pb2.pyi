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

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    JPEG: _ClassVar[OutputFormat]
    PNG: _ClassVar[OutputFormat]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
JPEG: OutputFormat
PNG: OutputFormat

class CompositeBatchRequest(_message.Message):
    __slots__ = ("model_id", "visual_frames", "raw_audio", "audio_features", "batch_size", "start_frame_idx", "sample_rate", "audio_encoding", "audio_channels", "output_format", "jpeg_quality")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VISUAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RAW_AUDIO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FEATURES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    visual_frames: bytes
    raw_audio: bytes
    audio_features: bytes
    batch_size: int
    start_frame_idx: int
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    output_format: OutputFormat
    jpeg_quality: int
    def __init__(self, model_id: _Optional[str] = ..., visual_frames: _Optional[bytes] = ..., raw_audio: _Optional[bytes] = ..., audio_features: _Optional[bytes] = ..., batch_size: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class CompositeBatchResponse(_message.Message):
    __slots__ = ("composited_frames", "inference_time_ms", "composite_time_ms", "total_time_ms", "audio_processing_ms", "model_loaded", "model_load_time_ms", "success", "error", "gpu_id", "background_indices", "utterance_frames")
    COMPOSITED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GPU_ID_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_INDICES_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    composited_frames: _containers.RepeatedScalarFieldContainer[bytes]
    inference_time_ms: float
    composite_time_ms: float
    total_time_ms: float
    audio_processing_ms: float
    model_loaded: bool
    model_load_time_ms: float
    success: bool
    error: str
    gpu_id: int
    background_indices: _containers.RepeatedScalarFieldContainer[int]
    utterance_frames: int
    def __init__(self, composited_frames: _Optional[_Iterable[bytes]] = ..., inference_time_ms: _Optional[float] = ..., composite_time_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., audio_processing_ms: _Optional[float] = ..., model_loaded: _Optional[bool] = ..., model_load_time_ms: _Optional[float] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ..., gpu_id: _Optional[int] = ..., background_indices: _Optional[_Iterable[int]] = ..., utterance_frames: _Optional[int] = ...) -> None: ...

class RenderUtteranceRequest(_message.Message):
    __slots__ = ("model_id", "raw_audio", "sample_rate", "audio_encoding", "audio_channels", "start_frame_idx", "output_format", "jpeg_quality")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    raw_audio: bytes
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    start_frame_idx: int
    output_format: OutputFormat
    jpeg_quality: int
    def __init__(self, model_id: _Optional[str] = ..., raw_audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("index", "pts_ms", "background_index", "image", "silence_fill")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_MS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SILENCE_FILL_FIELD_NUMBER: _ClassVar[int]
    index: int
    pts_ms: int
    background_index: int
    image: bytes
    silence_fill: bool
    def __init__(self, index: _Optional[int] = ..., pts_ms: _Optional[int] = ..., background_index: _Optional[int] = ..., image: _Optional[bytes] = ..., silence_fill: _Optional[bool] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("audio_ms", "inference_ms", "composite_ms", "encode_ms")
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    audio_ms: float
    inference_ms: float
    composite_ms: float
    encode_ms: float
    def __init__(self, audio_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., composite_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ...) -> None: ...

class RenderUtteranceResponse(_message.Message):
    __slots__ = ("frames", "total_frames", "width", "height", "timings")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    total_frames: int
    width: int
    height: int
    timings: StageTimings
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., total_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model_id", "sample_rate", "audio_encoding", "audio_channels", "start_frame_idx", "output_format", "jpeg_quality", "lookahead_rows", "paced")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_IDX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    PACED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sample_rate: int
    audio_encoding: AudioEncoding
    audio_channels: int
    start_frame_idx: int
    output_format: OutputFormat
    jpeg_quality: int
    lookahead_rows: int
    paced: bool
    def __init__(self, model_id: _Optional[str] = ..., sample_rate: _Optional[int] = ..., audio_encoding: _Optional[_Union[AudioEncoding, str]] = ..., audio_channels: _Optional[int] = ..., start_frame_idx: _Optional[int] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ..., jpeg_quality: _Optional[int] = ..., lookahead_rows: _Optional[int] = ..., paced: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRenderRequest(_message.Message):
    __slots__ = ("config", "audio", "interrupt")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: AudioChunk
    interrupt: Interrupt
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ...) -> None: ...

class StreamRenderResponse(_message.Message):
    __slots__ = ("frames", "session_id", "width", "height", "timings")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    session_id: str
    width: int
    height: int
    timings: StageTimings
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., session_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("success", "error", "load_time_ms", "stats")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    load_time_ms: float
    stats: ModelStats
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ..., load_time_ms: _Optional[float] = ..., stats: _Optional[_Union[ModelStats, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("success", "error")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

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

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("healthy", "inference_server_healthy", "loaded_models", "max_models", "version", "inference_server_url")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SERVER_HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SERVER_URL_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    inference_server_healthy: bool
    loaded_models: int
    max_models: int
    version: str
    inference_server_url: str
    def __init__(self, healthy: _Optional[bool] = ..., inference_server_healthy: _Optional[bool] = ..., loaded_models: _Optional[int] = ..., max_models: _Optional[int] = ..., version: _Optional[str] = ..., inference_server_url: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "loaded", "model_path", "background_dir", "crop_rects_path", "stats")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_DIR_FIELD_NUMBER: _ClassVar[int]
    CROP_RECTS_PATH_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    loaded: bool
    model_path: str
    background_dir: str
    crop_rects_path: str
    stats: ModelStats
    def __init__(self, model_id: _Optional[str] = ..., loaded: _Optional[bool] = ..., model_path: _Optional[str] = ..., background_dir: _Optional[str] = ..., crop_rects_path: _Optional[str] = ..., stats: _Optional[_Union[ModelStats, _Mapping]] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("usage_count", "last_used_unix_ms", "total_inference_time_ms", "memory_bytes", "loaded_unix_ms")
    USAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    usage_count: int
    last_used_unix_ms: int
    total_inference_time_ms: float
    memory_bytes: int
    loaded_unix_ms: int
    def __init__(self, usage_count: _Optional[int] = ..., last_used_unix_ms: _Optional[int] = ..., total_inference_time_ms: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., loaded_unix_ms: _Optional[int] = ...) -> None: ...
