"""ONNX Runtime sessions for the audio encoder and the avatar UNets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lipsync.errors import FailedPrecondition

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderError(Exception):
    """The configured device cannot be used by this onnxruntime installation."""


def select_providers(device: str, gpu_id: int) -> list:
    """Choose ONNX Runtime execution providers for the configured device.

    "auto" takes CUDA when the installed onnxruntime offers it (onnxruntime-gpu) and the CPU
    otherwise; "cuda" without the CUDA provider is a configuration error.
    """
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and CUDA in available:
        return [(CUDA, {"device_id": gpu_id}), CPU]
    if device == "cuda":
        raise ProviderError(
            f"models.device is 'cuda' but onnxruntime {ort.__version__} offers only {available}; "
            "install onnxruntime-gpu or set models.device to 'auto' or 'cpu'"
        )
    return [CPU]


def providers_for_device(providers: list, gpu_id: int) -> list:
    """Return the providers with the CUDA provider pointed at gpu_id (CPU lists unchanged)."""
    if isinstance(providers[0], tuple) and providers[0][0] == CUDA:
        return [(CUDA, {**providers[0][1], "device_id": gpu_id}), *providers[1:]]
    return providers


def describe_providers(providers: list) -> str:
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    if names[0] == CUDA:
        return f"CUDA (device {providers[0][1]['device_id']})"
    return "CPU (no CUDA provider in this onnxruntime installation or device set to cpu)"


def create_session(
    path: Path, providers: list, *, intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Create an inference session, failing with a message that names the file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise FailedPrecondition(f"cannot load ONNX model {path}: {exc}") from exc

    requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if session.get_providers()[0] != requested:
        logger.warning(
            "%s: requested %s but ONNX Runtime uses %s",
            path.name,
            requested,
            session.get_providers(),
        )
    return session


def _io_names(session: ort.InferenceSession) -> tuple[list[str], list[str]]:
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


class AudioEncoder:
    """The audio encoder: mel windows [B, 1, 80, 16] -> features [B, 512]."""

    def __init__(self, session: ort.InferenceSession, *, batch_size: int) -> None:
        inputs, outputs = _io_names(session)
        if "mel_input" not in inputs or "audio_features" not in outputs:
            raise FailedPrecondition(
                f"audio encoder has inputs {inputs} and outputs {outputs}; expected input "
                "'mel_input' [B,1,80,16] and output 'audio_features' [B,512]"
            )
        self.session = session
        self.batch_size = batch_size
        dim = session.get_outputs()[0].shape[-1]
        self.feature_dim: int | None = dim if isinstance(dim, int) else None

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """Encode mel windows [K, 1, 80, 16] float32 into features [K, D] float32."""
        parts = [
            self.session.run(["audio_features"], {"mel_input": windows[i : i + self.batch_size]})[0]
            for i in range(0, len(windows), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)


class UNet:
    """An avatar's UNet: face input [B, 6, 320, 320] + audio context -> mouth [B, 3, 320, 320]."""

    def __init__(self, session: ort.InferenceSession, source: Path) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if "input" not in inputs or "audio" not in inputs or "output" not in outputs:
            raise FailedPrecondition(
                f"UNet {source} has inputs {sorted(inputs)} and outputs {outputs}; expected "
                "inputs 'input' and 'audio' and output 'output'"
            )
        audio_dims = inputs["audio"].shape[1:]
        if not all(isinstance(d, int) for d in audio_dims) or int(np.prod(audio_dims)) % 16:
            raise FailedPrecondition(
                f"UNet {source}: input 'audio' has shape {inputs['audio'].shape}; expected a "
                "fixed shape holding 16 rows of audio features, such as [B, 32, 16, 16]"
            )
        self.session = session
        self.audio_shape: tuple[int, ...] = tuple(audio_dims)

    def check_features(self, feature_dim: int | None, source: Path) -> None:
        """Check that the audio input contains 16 rows of the audio encoder's features."""
        if feature_dim is not None and int(np.prod(self.audio_shape)) != 16 * feature_dim:
            raise FailedPrecondition(
                f"UNet {source}: input 'audio' {list(self.audio_shape)} does not hold 16 rows of "
                f"the audio encoder's {feature_dim} features"
            )

    def run(self, face: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """Run one batch: float32 [B,6,320,320] and [B,*audio_shape] -> float32 [B,3,320,320]."""
        return self.session.run(["output"], {"input": face, "audio": audio})[0]
