"""Small stand-in ONNX models for the built-in demo avatar.

These models are stand-ins for a trained SyncTalk_2D export. They keep its input and output
contract, so the serving pipeline runs unchanged on them, but they are built from a handful of
ONNX operators with fixed, seeded constants instead of trained weights:

* The audio encoder maps a mel window, ``mel_input`` float32 [B, 1, 80, 16] with values in
  [-4, 4] (silence is -4), to ``audio_features`` float32 [B, 512]. The features are the
  window's loudness in [0, 1] times a fixed seeded pattern plus a small spectral term, so
  silence gives exactly 0 and the mean over the 512 features equals the loudness.
* The UNet maps ``input`` float32 [B, 6, 320, 320] and ``audio`` float32 [B, 32, 16, 16] to
  ``output`` float32 [B, 3, 320, 320] in [0, 1]. Channels 0-2 of ``input`` are the face input
  / 255 in BGR order, and channels 3-5 the same image with the centre masked. ``audio`` is 16
  feature rows reshaped row-major, with row r in channels 2r and 2r + 1. The UNet copies the
  face and draws an open mouth centred at ``FACE_INPUT_MOUTH_CENTER``, whose opening grows with
  the loudness of the centre rows 7 and 8 (channels 14-17). At loudness 0 the output equals the
  face.

Loudness is ``clip((level - SILENCE_LEVEL) / (FULL_LEVEL - SILENCE_LEVEL), 0, 1)``, where
``level`` is a weighted mean of the mel window. The weights cover all 80 bins equally and peak
40 ms into the 200 ms window. Window k starts at the time of video frame k, and the serving
pipeline puts one copy of the first feature row in front, so rows 7 and 8 of output frame i are
windows i - 2 and i - 1 and the mouth follows the audio within about one frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipsync.demo.face import FACE_INPUT_MOUTH_CENTER, FACE_INPUT_SIZE

OPSET_VERSION = 17
IR_VERSION = 8
"""ONNX IR version of the written files. IR 8 is the version of opset 17, which onnxruntime 1.17
loads."""

MEL_BINS = 80
MEL_FRAMES = 16
FEATURE_SIZE = 512
AUDIO_ROWS = 16
"""Feature rows per UNet call: frames i - 8 .. i + 7 around output frame i."""

SILENCE_LEVEL = -3.0
"""Weighted mel level at and below which the mouth stays closed."""
FULL_LEVEL = -0.8
"""Weighted mel level at and above which the mouth is fully open."""

# Mouth geometry in face-input pixels. Heights are at full loudness and scale with it.
MOUTH_HALF_WIDTH = 58.0
LIP_HALF_WIDTH = 72.0
OPEN_HEIGHT_UP = 10.0
"""How far the opening reaches above the lip line."""
OPEN_HEIGHT_DOWN = 34.0
"""How far the opening reaches below the lip line. The jaw drops more than the upper lip rises."""
CORNER_LIFT = 4.8
"""How far the lip line rises from the centre to the mouth corners: the 2.5 design pixels of the
demo face times the crop scale 328 / 172."""
LIP_THICKNESS_UP = 12.0
LIP_THICKNESS_DOWN = 22.0
HIGHLIGHT_RADII = (22.0, 5.0)
"""Horizontal and vertical radius of the lower-lip highlight."""
TEETH_HEIGHT = 8.0
TONGUE_HEIGHT = 12.0
EDGE_SOFTNESS = 1.1
"""Sigmoid scale of the mouth edges in pixels: the edge blends over about four pixels."""

# Colours are BGR in [0, 1].
_MOUTH_INTERIOR = (0.09, 0.08, 0.2)
_TEETH = (0.78, 0.82, 0.86)
_TONGUE = (0.3, 0.3, 0.62)

_LEVEL_PEAK_FRAME = 3.2
_LEVEL_SPREAD_FRAMES = 2.5
_FEATURE_SEED = 20240611


def build_audio_encoder(path: Path) -> Path:
    """Write the stand-in audio encoder ONNX model.

    The model maps ``mel_input`` float32 [B, 1, 80, 16] to ``audio_features`` float32
    [B, 512]. Features are ``loudness * (pattern + spectral_term)``: ``pattern`` is a fixed
    seeded vector with mean 1 and ``spectral_term`` is a seeded projection of the window's
    mean spectrum with mean 0 over the features. So silence gives all zeros and the mean
    feature equals the loudness in [0, 1].

    Parameters
    ----------
    path : Path
        Destination ``.onnx`` file. Missing parent folders are created.

    Returns
    -------
    Path
        ``path``, after the model was written. The bytes are the same on every call.
    """
    rng = np.random.default_rng(_FEATURE_SEED)
    frames = np.arange(MEL_FRAMES, dtype=np.float64)
    time_weights = np.exp(-0.5 * ((frames - _LEVEL_PEAK_FRAME) / _LEVEL_SPREAD_FRAMES) ** 2)
    level_weights = np.outer(np.ones(MEL_BINS), time_weights)
    level_weights /= level_weights.sum()

    pattern = rng.uniform(0.5, 1.5, size=FEATURE_SIZE)
    pattern /= pattern.mean()
    projection = rng.normal(0.0, 0.02, size=(MEL_BINS, FEATURE_SIZE))
    projection -= projection.mean(axis=1, keepdims=True)

    span = FULL_LEVEL - SILENCE_LEVEL
    initializers = [
        _tensor("flat_shape", np.array([-1, MEL_BINS * MEL_FRAMES], dtype=np.int64)),
        _tensor("level_weights", level_weights.reshape(MEL_BINS * MEL_FRAMES, 1)),
        _tensor("level_offset", np.array(-SILENCE_LEVEL)),
        _tensor("level_scale", np.array(1.0 / span)),
        _tensor("zero", np.array(0.0)),
        _tensor("one", np.array(1.0)),
        _tensor("spectrum_shape", np.array([-1, MEL_BINS], dtype=np.int64)),
        _tensor("projection", projection),
        _tensor("pattern", pattern),
    ]
    nodes = [
        # Loudness: a weighted mean of the whole window, mapped affinely and clipped to [0, 1].
        helper.make_node("Reshape", ["mel_input", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "level_weights"], ["level"]),
        helper.make_node("Add", ["level", "level_offset"], ["level_shifted"]),
        helper.make_node("Mul", ["level_shifted", "level_scale"], ["level_scaled"]),
        helper.make_node("Clip", ["level_scaled", "zero", "one"], ["loudness"]),
        # Spectral term: the mean spectrum over time, centred, projected to 512 values.
        helper.make_node("ReduceMean", ["mel_input"], ["spectrum_4d"], axes=[3], keepdims=1),
        helper.make_node("Reshape", ["spectrum_4d", "spectrum_shape"], ["spectrum"]),
        helper.make_node("ReduceMean", ["spectrum"], ["spectrum_mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["spectrum", "spectrum_mean"], ["spectrum_centred"]),
        helper.make_node("MatMul", ["spectrum_centred", "projection"], ["spectral_term"]),
        helper.make_node("Add", ["spectral_term", "pattern"], ["feature_pattern"]),
        helper.make_node("Mul", ["feature_pattern", "loudness"], ["audio_features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_audio_encoder",
        [_value_info("mel_input", ["batch", 1, MEL_BINS, MEL_FRAMES])],
        [_value_info("audio_features", ["batch", FEATURE_SIZE])],
        initializers,
    )
    return _save(graph, path, "Stand-in audio encoder: mel window to loudness features.")


def build_unet(path: Path) -> Path:
    """Write the stand-in UNet ONNX model.

    The model maps ``input`` float32 [B, 6, 320, 320] and ``audio`` float32 [B, 32, 16, 16]
    to ``output`` float32 [B, 3, 320, 320] in [0, 1]. The output is the face (channels 0-2 of
    ``input``) with an open mouth drawn around ``FACE_INPUT_MOUTH_CENTER``. The mouth has lips
    in colours sampled from the closed lips of the face and a dark interior. Upper teeth show
    once the opening is wide enough, and a hint of tongue at the bottom. The opening reaches
    ``OPEN_HEIGHT_UP`` pixels above and ``OPEN_HEIGHT_DOWN`` pixels below the lip line times
    the loudness, the mean of channels 14-17 of ``audio`` clipped to [0, 1]. Channels 3-5 of
    ``input`` are not read.

    Parameters
    ----------
    path : Path
        Destination ``.onnx`` file. Missing parent folders are created.

    Returns
    -------
    Path
        ``path``, after the model was written. The bytes are the same on every call.
    """
    initializers, geometry_nodes = _mouth_geometry()
    # The lip colours are sampled in 20-pixel-wide patches just above and below the lip line.
    # NOTE: this assumes closed lips there, as in the demo face. Other faces get other colours.
    lip_column = int(FACE_INPUT_MOUTH_CENTER[0])
    lip_row = int(FACE_INPUT_MOUTH_CENTER[1])
    initializers += [
        _tensor("face_starts", np.array([0], dtype=np.int64)),
        _tensor("face_ends", np.array([3], dtype=np.int64)),
        _tensor("channel_axis", np.array([1], dtype=np.int64)),
        _tensor("centre_starts", np.array([14], dtype=np.int64)),
        _tensor("centre_ends", np.array([18], dtype=np.int64)),
        _tensor("lip_upper_starts", np.array([0, lip_row - 10, lip_column - 10], dtype=np.int64)),
        _tensor("lip_upper_ends", np.array([3, lip_row - 4, lip_column + 10], dtype=np.int64)),
        _tensor("lip_lower_starts", np.array([0, lip_row + 5, lip_column - 10], dtype=np.int64)),
        _tensor("lip_lower_ends", np.array([3, lip_row + 15, lip_column + 10], dtype=np.int64)),
        _tensor("sample_axes", np.array([1, 2, 3], dtype=np.int64)),
        _tensor("zero", np.array(0.0)),
        _tensor("one", np.array(1.0)),
        _tensor("gate_gain", np.array(8.0)),
        _tensor("teeth_gate_offset", np.array(-0.3)),
        _tensor("teeth_gate_gain", np.array(5.0)),
        _tensor("inverse_softness", np.array(1.0 / EDGE_SOFTNESS)),
        _tensor("open_up", np.array(OPEN_HEIGHT_UP)),
        _tensor("open_down", np.array(OPEN_HEIGHT_DOWN)),
        _tensor("teeth_height", np.array(TEETH_HEIGHT)),
        _tensor("tongue_height", np.array(TONGUE_HEIGHT)),
        _tensor("highlight_gain", np.array(0.12)),
        _tensor("highlight_row", np.array(0.45 * LIP_THICKNESS_DOWN)),
        _tensor("highlight_inverse_radius", np.array(1.0 / HIGHLIGHT_RADII[1])),
        _tensor("interior_colour", _colour(_MOUTH_INTERIOR)),
        _tensor("teeth_colour", _colour(_TEETH)),
        _tensor("tongue_colour", _colour(_TONGUE)),
    ]
    nodes = [
        *geometry_nodes,
        helper.make_node("Slice", ["input", "face_starts", "face_ends", "channel_axis"], ["face"]),
        # Loudness of the current frame: the mean of feature rows 7 and 8 (channels 14-17).
        helper.make_node(
            "Slice", ["audio", "centre_starts", "centre_ends", "channel_axis"], ["centre_rows"]
        ),
        helper.make_node(
            "ReduceMean", ["centre_rows"], ["centre_level"], axes=[1, 2, 3], keepdims=1
        ),
        helper.make_node("Clip", ["centre_level", "zero", "one"], ["opening"]),
        # The gate fades the mouth in over the first eighth of the range and is 0 in silence.
        helper.make_node("Mul", ["opening", "gate_gain"], ["gate_raw"]),
        helper.make_node("Clip", ["gate_raw", "zero", "one"], ["gate"]),
        helper.make_node("Add", ["opening", "teeth_gate_offset"], ["teeth_gate_shifted"]),
        helper.make_node("Mul", ["teeth_gate_shifted", "teeth_gate_gain"], ["teeth_gate_raw"]),
        helper.make_node("Clip", ["teeth_gate_raw", "zero", "one"], ["teeth_gate"]),
        # Half-height of the opening per pixel: opening * (up or down height) * column profile.
        helper.make_node("Mul", ["opening", "open_height"], ["height_rows"]),
        helper.make_node("Mul", ["height_rows", "mouth_profile"], ["open_half_height"]),
        # Lip colours sampled from the closed lips of the face: upper lip and lower lip.
        helper.make_node(
            "Slice",
            ["face", "lip_upper_starts", "lip_upper_ends", "sample_axes"],
            ["lip_upper_patch"],
        ),
        helper.make_node(
            "ReduceMean", ["lip_upper_patch"], ["lip_upper_colour"], axes=[2, 3], keepdims=1
        ),
        helper.make_node(
            "Slice",
            ["face", "lip_lower_starts", "lip_lower_ends", "sample_axes"],
            ["lip_lower_patch"],
        ),
        helper.make_node(
            "ReduceMean", ["lip_lower_patch"], ["lip_lower_colour"], axes=[2, 3], keepdims=1
        ),
        helper.make_node("Sub", ["lip_upper_colour", "lip_lower_colour"], ["lip_colour_step"]),
        helper.make_node("Mul", ["lip_colour_step", "upper_rows"], ["lip_colour_offset"]),
        helper.make_node("Add", ["lip_lower_colour", "lip_colour_offset"], ["lip_colour_flat"]),
        # Highlight in the middle of the lower lip, which moves down with the jaw.
        helper.make_node("Mul", ["opening", "open_down"], ["drop"]),
        helper.make_node("Mul", ["drop", "mouth_profile"], ["drop_profile"]),
        helper.make_node("Sub", ["row_offset", "drop_profile"], ["below_lower_edge"]),
        helper.make_node("Sub", ["below_lower_edge", "highlight_row"], ["highlight_offset"]),
        helper.make_node("Mul", ["highlight_offset", "highlight_inverse_radius"], ["highlight_dy"]),
        helper.make_node("Mul", ["highlight_dy", "highlight_dy"], ["highlight_dy2"]),
        helper.make_node("Add", ["highlight_dy2", "highlight_dx2"], ["highlight_distance"]),
        helper.make_node("Neg", ["highlight_distance"], ["highlight_negative"]),
        helper.make_node("Exp", ["highlight_negative"], ["highlight"]),
        helper.make_node("Mul", ["highlight", "highlight_gain"], ["highlight_scaled"]),
        helper.make_node("Add", ["highlight_scaled", "one"], ["highlight_factor"]),
        helper.make_node("Mul", ["lip_colour_flat", "highlight_factor"], ["lip_colour_lit"]),
        helper.make_node("Clip", ["lip_colour_lit", "zero", "one"], ["lip_colour"]),
        # Lip coverage: inside the opening widened by the lip thickness.
        helper.make_node("Add", ["open_half_height", "lip_half_height"], ["lip_outer"]),
        *_soft_inside("lip_outer", "lip_width_window", "gate", "lip_alpha"),
        *_blend("face", "lip_colour", "lip_alpha", "with_lips"),
        # Interior: dark, with the tongue at the bottom and the upper teeth at the top.
        *_soft_inside("open_half_height", "mouth_width_window", "gate", "interior_alpha"),
        helper.make_node("Mul", ["opening", "open_up"], ["lift"]),
        helper.make_node("Mul", ["lift", "mouth_profile"], ["lift_profile"]),
        helper.make_node("Add", ["row_offset", "lift_profile"], ["below_top"]),
        helper.make_node("Mul", ["opening", "teeth_height"], ["teeth_rows"]),
        helper.make_node("Mul", ["teeth_rows", "mouth_profile"], ["teeth_extent"]),
        helper.make_node("Sub", ["teeth_extent", "below_top"], ["teeth_margin"]),
        *_soft_edge("teeth_margin", "teeth_edge"),
        helper.make_node("Mul", ["teeth_edge", "teeth_width_window"], ["teeth_band"]),
        helper.make_node("Mul", ["teeth_band", "teeth_gate"], ["teeth_alpha"]),
        helper.make_node("Sub", ["drop_profile", "row_offset"], ["above_bottom"]),
        helper.make_node("Mul", ["opening", "tongue_height"], ["tongue_rows"]),
        helper.make_node("Mul", ["tongue_rows", "mouth_profile"], ["tongue_extent"]),
        helper.make_node("Sub", ["tongue_extent", "above_bottom"], ["tongue_margin"]),
        *_soft_edge("tongue_margin", "tongue_edge"),
        helper.make_node("Mul", ["tongue_edge", "tongue_width_window"], ["tongue_alpha"]),
        *_blend("interior_colour", "tongue_colour", "tongue_alpha", "interior_tongue"),
        *_blend("interior_tongue", "teeth_colour", "teeth_alpha", "interior"),
        *_blend("with_lips", "interior", "interior_alpha", "composited"),
        helper.make_node("Clip", ["composited", "zero", "one"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_unet",
        [
            _value_info("input", ["batch", 6, FACE_INPUT_SIZE, FACE_INPUT_SIZE]),
            _value_info("audio", ["batch", 2 * AUDIO_ROWS, 16, 16]),
        ],
        [_value_info("output", ["batch", 3, FACE_INPUT_SIZE, FACE_INPUT_SIZE])],
        initializers,
    )
    return _save(graph, path, "Stand-in UNet: copies the face and draws a loudness-sized mouth.")


def _mouth_geometry() -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    """Build the constant coordinate grids of the mouth and the nodes that combine them.

    Each constant varies along one axis only, per row [1, 1, 320, 1] or per column
    [1, 1, 1, 320], so the file stays small. The nodes broadcast them to [1, 1, 320, 320]:

    * ``row_offset``: signed distance in pixels below the lip line. The lip line runs through
      the mouth centre and rises towards the corners like the closed lips of the demo face.
    * ``row_distance``: its absolute value.
    * ``upper_rows``: 1 above the lip line and 0 below.
    * ``open_height``: ``OPEN_HEIGHT_UP`` above the lip line, ``OPEN_HEIGHT_DOWN`` below.
    * ``lip_half_height``: the lip thickness on each side, thinning towards the corners.
    """
    center_x, center_y = FACE_INPUT_MOUTH_CENTER
    pixels = np.arange(FACE_INPUT_SIZE, dtype=np.float64)
    dx = pixels - center_x
    lip_line = center_y - CORNER_LIFT * np.clip(np.abs(dx) / LIP_HALF_WIDTH, 0.0, 1.0) ** 2

    def rows(values: np.ndarray) -> np.ndarray:
        return values.reshape(1, 1, FACE_INPUT_SIZE, 1)

    def columns(values: np.ndarray) -> np.ndarray:
        return values.reshape(1, 1, 1, FACE_INPUT_SIZE)

    def profile(half_width: float) -> np.ndarray:
        return np.sqrt(np.clip(1.0 - (dx / half_width) ** 2, 0.0, None))

    def width_window(half_width: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(half_width - np.abs(dx)) / EDGE_SOFTNESS))

    tensors = [
        _tensor("pixel_rows", rows(pixels)),
        _tensor("lip_line", columns(lip_line)),
        _tensor("open_height_step", np.array(OPEN_HEIGHT_UP - OPEN_HEIGHT_DOWN)),
        _tensor("open_height_down", np.array(OPEN_HEIGHT_DOWN)),
        _tensor("lip_thickness_step", np.array(LIP_THICKNESS_UP - LIP_THICKNESS_DOWN)),
        _tensor("lip_thickness_down", np.array(LIP_THICKNESS_DOWN)),
        _tensor("lip_taper", columns(profile(LIP_HALF_WIDTH) ** 0.8)),
        _tensor("mouth_profile", columns(profile(MOUTH_HALF_WIDTH))),
        _tensor("mouth_width_window", columns(width_window(MOUTH_HALF_WIDTH))),
        _tensor("lip_width_window", columns(width_window(LIP_HALF_WIDTH))),
        _tensor("teeth_width_window", columns(width_window(0.6 * MOUTH_HALF_WIDTH))),
        _tensor("tongue_width_window", columns(width_window(0.75 * MOUTH_HALF_WIDTH))),
        _tensor("highlight_dx2", columns((dx / HIGHLIGHT_RADII[0]) ** 2)),
        _tensor("grid_zero", np.array(0.0)),
    ]
    nodes = [
        helper.make_node("Sub", ["pixel_rows", "lip_line"], ["row_offset"]),
        helper.make_node("Abs", ["row_offset"], ["row_distance"]),
        helper.make_node("Less", ["row_offset", "grid_zero"], ["upper_mask"]),
        helper.make_node("Cast", ["upper_mask"], ["upper_rows"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["upper_rows", "open_height_step"], ["open_height_offset"]),
        helper.make_node("Add", ["open_height_offset", "open_height_down"], ["open_height"]),
        helper.make_node("Mul", ["upper_rows", "lip_thickness_step"], ["lip_thickness_offset"]),
        helper.make_node("Add", ["lip_thickness_offset", "lip_thickness_down"], ["lip_thickness"]),
        helper.make_node("Mul", ["lip_thickness", "lip_taper"], ["lip_half_height"]),
    ]
    return tensors, nodes


def _soft_inside(half_height: str, width_window: str, gate: str, alpha: str) -> list:
    """Nodes for ``alpha = gate * width_window * sigmoid((half_height - |dy|) / softness)``."""
    prefix = alpha
    return [
        helper.make_node("Sub", [half_height, "row_distance"], [f"{prefix}_margin"]),
        *_soft_edge(f"{prefix}_margin", f"{prefix}_edge"),
        helper.make_node("Mul", [f"{prefix}_edge", width_window], [f"{prefix}_band"]),
        helper.make_node("Mul", [f"{prefix}_band", gate], [alpha]),
    ]


def _soft_edge(margin: str, edge: str) -> list:
    """Nodes for ``edge = sigmoid(margin / softness)``, 1 inside and 0 outside."""
    return [
        helper.make_node("Mul", [margin, "inverse_softness"], [f"{edge}_scaled"]),
        helper.make_node("Sigmoid", [f"{edge}_scaled"], [edge]),
    ]


def _blend(base: str, paint: str, alpha: str, result: str) -> list:
    """Nodes for ``result = base + alpha * (paint - base)``."""
    return [
        helper.make_node("Sub", [paint, base], [f"{result}_delta"]),
        helper.make_node("Mul", [f"{result}_delta", alpha], [f"{result}_step"]),
        helper.make_node("Add", [base, f"{result}_step"], [result]),
    ]


def _colour(bgr: tuple[float, float, float]) -> np.ndarray:
    return np.array(bgr, dtype=np.float64).reshape(1, 3, 1, 1)


def _tensor(name: str, values: np.ndarray) -> TensorProto:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    return numpy_helper.from_array(array, name=name)


def _value_info(name: str, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(graph: onnx.GraphProto, path: Path, description: str) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
        producer_name="lipsync.demo",
        doc_string=description,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
