"""Procedurally drawn demo person for the built-in demo avatar.

Every frame shows the same person in front of a plain wall, with slight head motion (sway, bob,
tilt and a small scale change) and two blinks per loop. The motion is periodic in
``DEFAULT_FRAME_COUNT`` frames, so the frames loop without a jump.

The face box follows the SyncTalk_2D convention: a square box over the lower face, from the
nose to below the chin. Cropping ``frame[y1:y2, x1:x2]``, resizing the crop to 328x328 with
``cv2.INTER_CUBIC`` and taking ``[4:324, 4:324]`` gives the 320x320 face input of the UNet.
The box is sized and placed from the head pose so that the centre of the lips lands at
``FACE_INPUT_MOUTH_CENTER`` in that face input on every frame, within about one pixel of
integer rounding. The stand-in UNet in ``lipsync.demo.models`` draws its open mouth there.

All geometry is designed on a 1280x720 canvas and scaled by ``height / 720`` for other frame
sizes, with the person centred horizontally.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import cv2
import numpy as np

FRAME_WIDTH = 1280
FRAME_HEIGHT = 720
DEFAULT_FRAME_COUNT = 125

FACE_CROP_SIZE = 328
"""Side in pixels of the resized face crop."""
FACE_INPUT_SIZE = 320
"""Side in pixels of the face input, the centre ``[4:324, 4:324]`` of the resized crop."""
FACE_INPUT_MOUTH_CENTER = (159.5, 180.0)
"""Centre ``(x, y)`` of the lips in face-input pixel coordinates (pixel centres are integers)."""

_FloatArray = np.ndarray

# Design canvas. All coordinates below are in pixels of a 1280x720 frame.
_DESIGN_HEIGHT = 720.0
_CENTER_X = 640.0
_SUPERSAMPLE = 2
_MOUTH = (640.0, 405.0)
"""Centre of the closed lips (middle of the lip line) in design coordinates."""
_LIP_HALF_WIDTH = 38.0
_LIP_CORNER_LIFT = 2.5
"""How far the lip line rises from the centre to the mouth corners, in design pixels."""
_BOX_SIDE = 172.0
"""Face box side in design pixels at head scale 1."""
_HEAD_PIVOT = (640.0, 470.0)
"""Point the head tilts and scales around, at the top of the neck."""
_HEAD_REGION = (480, 100, 800, 500)
_BODY_REGION = (180, 380, 1100, 720)

# Colours are BGR.
_WALL_TOP = (198, 188, 176)
_WALL_BOTTOM = (146, 136, 124)
_SKIN = (150, 178, 224)
_SKIN_SHADOW = (112, 136, 186)
_HAIR = (32, 42, 60)
_HAIR_LIGHT = (62, 78, 102)
_SHIRT = (122, 86, 48)
_SHIRT_DARK = (82, 56, 30)
_LIP_UPPER = (100, 98, 170)
_LIP_LOWER = (116, 116, 192)
_SCLERA = (232, 238, 242)
_IRIS = (58, 88, 122)
_PUPIL = (22, 22, 26)

_EYE_OPEN = 0
_EYE_HALF = 1
_EYE_CLOSED = 2
_BLINK_FRAMES = {
    40: _EYE_HALF,
    41: _EYE_CLOSED,
    42: _EYE_CLOSED,
    43: _EYE_HALF,
    97: _EYE_HALF,
    98: _EYE_CLOSED,
    99: _EYE_CLOSED,
    100: _EYE_HALF,
}
"""Eye state per frame index modulo ``DEFAULT_FRAME_COUNT``. Other frames have open eyes."""


def draw_frame(
    index: int, *, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one frame of the demo person and compute its face box.

    Parameters
    ----------
    index : int
        Frame index. Any integer is valid; the motion repeats every ``DEFAULT_FRAME_COUNT``
        frames and the result is deterministic for a given index and size.
    width, height : int
        Frame size in pixels. ``height`` must be at least 144 and ``width`` at least
        ``height // 2``.

    Returns
    -------
    frame : np.ndarray
        BGR image, shape (height, width, 3), dtype uint8.
    box : tuple[int, int, int, int]
        Square face box ``(x1, y1, x2, y2)`` in pixels with ``x2``/``y2`` exclusive, entirely
        inside the frame, so the crop is ``frame[y1:y2, x1:x2]``.

    Raises
    ------
    ValueError
        If the frame size is below the minimum.
    """
    _check_size(width, height)
    phase = 2.0 * math.pi * (index % DEFAULT_FRAME_COUNT) / DEFAULT_FRAME_COUNT
    head, body = _pose_transforms(phase, width, height)
    eye_state = _BLINK_FRAMES.get(index % DEFAULT_FRAME_COUNT, _EYE_OPEN)

    frame = _background(width, height).copy()
    _composite(frame, _body_sprite(width, height), body)
    _composite(frame, _head_sprite(width, height, eye_state), head)
    return frame, _face_box(head, width, height)


def face_box(
    index: int, *, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT
) -> tuple[int, int, int, int]:
    """Compute the face box of frame ``index`` without drawing the frame.

    Parameters
    ----------
    index : int
        Frame index, as for ``draw_frame``.
    width, height : int
        Frame size in pixels, as for ``draw_frame``.

    Returns
    -------
    tuple[int, int, int, int]
        The same box ``(x1, y1, x2, y2)`` that ``draw_frame`` returns for this index and size.
    """
    _check_size(width, height)
    phase = 2.0 * math.pi * (index % DEFAULT_FRAME_COUNT) / DEFAULT_FRAME_COUNT
    head, _ = _pose_transforms(phase, width, height)
    return _face_box(head, width, height)


def _check_size(width: int, height: int) -> None:
    if height < 144 or width < height // 2:
        raise ValueError(
            f"invalid frame size {width}x{height}: height must be at least 144 and width at "
            f"least height // 2"
        )


# Pose and face box


def _design_scale(width: int, height: int) -> tuple[float, float]:
    """Return the scale and x offset that map design coordinates to frame pixels."""
    scale = height / _DESIGN_HEIGHT
    return scale, width / 2.0 - _CENTER_X * scale


def _pose_transforms(phase: float, width: int, height: int) -> tuple[_FloatArray, _FloatArray]:
    """Return 2x3 affine maps, in frame pixels, that move the head and the body to their pose.

    At the design size the head sways up to 5.4 pixels sideways, bobs up to 3.5 pixels, tilts
    up to 1.5 degrees and scales by up to 1.2 %. The shoulders follow a quarter of the sway.
    """
    scale, _ = _design_scale(width, height)
    shift_x = 5.0 * math.sin(phase) + 1.5 * math.sin(3.0 * phase + 0.7)
    shift_y = 2.5 * math.sin(2.0 * phase + 1.1) + 1.0 * math.sin(5.0 * phase)
    zoom = 1.0 + 0.012 * math.sin(phase + 2.0)
    tilt_degrees = 1.2 * math.sin(2.0 * phase + 0.4) + 0.3 * math.sin(3.0 * phase)

    pivot_x, pivot_y = _to_frame(np.array([_HEAD_PIVOT]), width, height)[0]
    head = cv2.getRotationMatrix2D((float(pivot_x), float(pivot_y)), tilt_degrees, zoom)
    head[0, 2] += shift_x * scale
    head[1, 2] += shift_y * scale

    body = np.array([[1.0, 0.0, 0.25 * shift_x * scale], [0.0, 1.0, (0.3 * shift_y + 0.5) * scale]])
    return head, body


def _face_box(head: _FloatArray, width: int, height: int) -> tuple[int, int, int, int]:
    """Place the square face box so the lips land at ``FACE_INPUT_MOUTH_CENTER``.

    Face-input pixel ``u`` comes from box coordinate ``(u + 4.5) * side / 328 - 0.5`` under the
    pixel-centre convention of ``cv2.resize``, so the box origin is solved from that.
    """
    scale, _ = _design_scale(width, height)
    zoom = math.hypot(head[0, 0], head[1, 0])
    side = int(round(_BOX_SIDE * scale * zoom))
    mouth_x, mouth_y = _apply(head, _to_frame(np.array([_MOUTH]), width, height))[0]

    offset = FACE_INPUT_SIZE // 2 - FACE_CROP_SIZE // 2  # -4: face input pixel 0 is crop pixel 4
    center_x, center_y = FACE_INPUT_MOUTH_CENTER
    x1 = int(round(mouth_x + 0.5 - (center_x - offset + 0.5) * side / FACE_CROP_SIZE))
    y1 = int(round(mouth_y + 0.5 - (center_y - offset + 0.5) * side / FACE_CROP_SIZE))
    x1 = min(max(x1, 0), width - side)
    y1 = min(max(y1, 0), height - side)
    return x1, y1, x1 + side, y1 + side


def _to_frame(points: _FloatArray, width: int, height: int) -> _FloatArray:
    scale, offset_x = _design_scale(width, height)
    result = np.asarray(points, dtype=np.float64) * scale
    result[:, 0] += offset_x
    return result


def _apply(matrix: _FloatArray, points: _FloatArray) -> _FloatArray:
    return points @ matrix[:, :2].T + matrix[:, 2]


# Compositing


class _Sprite:
    """Premultiplied BGRA float32 image of one layer with its top-left corner in the frame."""

    def __init__(self, pixels: _FloatArray, origin: tuple[int, int]) -> None:
        self.pixels = pixels
        self.origin = origin


def _composite(frame: np.ndarray, sprite: _Sprite, transform: _FloatArray) -> None:
    """Warp ``sprite`` by ``transform`` and blend it over ``frame`` in place."""
    sprite_height, sprite_width = sprite.pixels.shape[:2]
    origin_x, origin_y = sprite.origin
    corners = np.array(
        [[0, 0], [sprite_width, 0], [0, sprite_height], [sprite_width, sprite_height]],
        dtype=np.float64,
    ) + np.array(sprite.origin, dtype=np.float64)
    moved = _apply(transform, corners)
    frame_height, frame_width = frame.shape[:2]
    x0 = max(int(math.floor(moved[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(moved[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(moved[:, 0].max())) + 1, frame_width)
    y1 = min(int(math.ceil(moved[:, 1].max())) + 1, frame_height)
    if x1 <= x0 or y1 <= y0:
        return

    # Map sprite pixels to region pixels: region = transform(sprite + origin) - (x0, y0).
    matrix = transform.copy()
    matrix[:, 2] += transform[:, :2] @ np.array([origin_x, origin_y], dtype=np.float64)
    matrix[0, 2] -= x0
    matrix[1, 2] -= y0
    warped = cv2.warpAffine(
        sprite.pixels,
        matrix,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0, 0.0, 0.0, 0.0),
    )
    region = frame[y0:y1, x0:x1].astype(np.float32)
    alpha = warped[:, :, 3:4]
    blended = region * (1.0 - alpha) + warped[:, :, :3]
    frame[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


# Drawing surface


class _Canvas:
    """Supersampled premultiplied BGRA drawing surface over a rectangle of the design canvas."""

    def __init__(self, region: tuple[int, int, int, int], width: int, height: int) -> None:
        scale, offset_x = _design_scale(width, height)
        left, top = _to_frame(np.array([region[:2]], dtype=np.float64), width, height)[0]
        right, bottom = _to_frame(np.array([region[2:]], dtype=np.float64), width, height)[0]
        self.origin = (int(math.floor(left)), int(math.floor(top)))
        self.size = (
            int(math.ceil(right)) - self.origin[0],
            int(math.ceil(bottom)) - self.origin[1],
        )
        self.factor = scale * _SUPERSAMPLE
        self.shift = (
            (offset_x - self.origin[0]) * _SUPERSAMPLE,
            -self.origin[1] * _SUPERSAMPLE,
        )
        shape = (self.size[1] * _SUPERSAMPLE, self.size[0] * _SUPERSAMPLE, 4)
        self.pixels = np.zeros(shape, dtype=np.float32)

    def to_pixels(self, points: _FloatArray) -> _FloatArray:
        """Map design coordinates to supersampled canvas pixel coordinates."""
        result = np.asarray(points, dtype=np.float64) * self.factor
        result[..., 0] += self.shift[0]
        result[..., 1] += self.shift[1]
        return result

    def length(self, design_pixels: float) -> float:
        return design_pixels * self.factor

    def grid(self, box: tuple[int, int, int, int]) -> tuple[_FloatArray, _FloatArray]:
        """Return design coordinates of the pixel centres in canvas pixel ``box``."""
        x0, y0, x1, y1 = box
        xs = (np.arange(x0, x1, dtype=np.float32) - self.shift[0]) / self.factor
        ys = (np.arange(y0, y1, dtype=np.float32) - self.shift[1]) / self.factor
        return np.meshgrid(xs, ys)

    def paint(
        self,
        shapes: Sequence[_FloatArray],
        colour: Sequence[float] | Callable[[_FloatArray, _FloatArray], _FloatArray],
        *,
        opacity: float = 1.0,
        blur: float = 0.0,
        stroke: float = 0.0,
        inside_only: bool = False,
        clip: _FloatArray | None = None,
    ) -> None:
        """Fill (or stroke) design-space polygons with a colour or a colour field.

        ``colour`` is a BGR triple or a function of design ``(x, y)`` grids that returns an
        (h, w, 3) float32 field. ``blur`` softens the mask by a Gaussian of that sigma in design
        pixels. With ``inside_only`` the paint only tints pixels already painted, scaled by
        their coverage, and leaves the coverage unchanged. ``clip`` is a polygon that limits
        the paint to its inside.
        """
        pixel_shapes = [self.to_pixels(shape) for shape in shapes]
        margin = self.length(3.0 * blur + stroke) + 2.0
        stacked = np.concatenate(pixel_shapes)
        height, width = self.pixels.shape[:2]
        x0 = max(int(stacked[:, 0].min() - margin), 0)
        y0 = max(int(stacked[:, 1].min() - margin), 0)
        x1 = min(int(stacked[:, 0].max() + margin) + 1, width)
        y1 = min(int(stacked[:, 1].max() + margin) + 1, height)
        if x1 <= x0 or y1 <= y0:
            return

        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        fixed = [np.round((shape - [x0, y0]) * 16.0).astype(np.int32) for shape in pixel_shapes]
        if stroke > 0.0:
            thickness = max(int(round(self.length(stroke))), 1)
            cv2.polylines(mask, fixed, False, 255, thickness, cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(mask, fixed, 255, cv2.LINE_AA, shift=4)
        alpha = mask.astype(np.float32) / 255.0
        if blur > 0.0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), self.length(blur))
        if clip is not None:
            clip_mask = np.zeros_like(mask)
            clip_points = np.round((self.to_pixels(clip) - [x0, y0]) * 16.0).astype(np.int32)
            cv2.fillPoly(clip_mask, [clip_points], 255, cv2.LINE_AA, shift=4)
            alpha = alpha * (clip_mask.astype(np.float32) / 255.0)
        alpha = (alpha * opacity)[:, :, None]

        if callable(colour):
            grid_x, grid_y = self.grid((x0, y0, x1, y1))
            paint = colour(grid_x, grid_y).astype(np.float32)
        else:
            paint = np.array(colour, dtype=np.float32)[None, None, :]

        target = self.pixels[y0:y1, x0:x1]
        if inside_only:
            coverage = target[:, :, 3:4]
            target[:, :, :3] = target[:, :, :3] * (1.0 - alpha) + paint * alpha * coverage
        else:
            target[:, :, :3] = target[:, :, :3] * (1.0 - alpha) + paint * alpha
            target[:, :, 3:4] = target[:, :, 3:4] * (1.0 - alpha) + alpha

    def shade_edges(self, depth: float, strength: float, colour: Sequence[float]) -> None:
        """Darken painted pixels near the edge of the painted area towards ``colour``.

        ``depth`` is the falloff distance in design pixels, so the shape looks rounded.
        """
        solid = (self.pixels[:, :, 3] > 0.5).astype(np.uint8)
        distance = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
        weight = (strength * np.exp(-distance / self.length(depth)))[:, :, None]
        coverage = self.pixels[:, :, 3:4]
        tint = np.array(colour, dtype=np.float32)[None, None, :] * coverage
        self.pixels[:, :, :3] = self.pixels[:, :, :3] * (1.0 - weight) + tint * weight

    def copy(self) -> _Canvas:
        duplicate = copy.copy(self)
        duplicate.pixels = self.pixels.copy()
        return duplicate

    def to_sprite(self) -> _Sprite:
        """Downsample to frame resolution with area averaging, which anti-aliases the edges."""
        pixels = cv2.resize(self.pixels, self.size, interpolation=cv2.INTER_AREA)
        return _Sprite(np.ascontiguousarray(pixels), self.origin)


# Shape helpers, all in design coordinates


def _ellipse(
    center: tuple[float, float],
    axes: tuple[float, float],
    *,
    angle: float = 0.0,
    start: float = 0.0,
    end: float = 360.0,
    count: int = 72,
) -> _FloatArray:
    theta = np.radians(np.linspace(start, end, count))
    x = axes[0] * np.cos(theta)
    y = axes[1] * np.sin(theta)
    rotation = math.radians(angle)
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    return np.stack([center[0] + x * cos_r - y * sin_r, center[1] + x * sin_r + y * cos_r], axis=1)


def _spline(points: Sequence[tuple[float, float]], *, closed: bool, steps: int = 12) -> _FloatArray:
    """Sample a Catmull-Rom spline through ``points``."""
    control = np.asarray(points, dtype=np.float64)
    if closed:
        padded = np.concatenate([control[-1:], control, control[:2]])
        segments = len(control)
    else:
        padded = np.concatenate([control[:1], control, control[-1:]])
        segments = len(control) - 1
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None]
    samples = []
    for i in range(segments):
        p0, p1, p2, p3 = padded[i : i + 4]
        samples.append(
            0.5
            * (
                2.0 * p1
                + (p2 - p0) * t
                + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * t**2
                + (3.0 * p1 - p0 - 3.0 * p2 + p3) * t**3
            )
        )
    if not closed:
        samples.append(control[-1:])
    return np.concatenate(samples)


def _mirror(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Mirror points about the vertical centre line of the face."""
    return [(2.0 * _CENTER_X - x, y) for x, y in points]


def _vertical_gradient(
    top_y: float, bottom_y: float, top: Sequence[float], bottom: Sequence[float]
) -> Callable[[_FloatArray, _FloatArray], _FloatArray]:
    top_colour = np.array(top, dtype=np.float32)
    bottom_colour = np.array(bottom, dtype=np.float32)

    def field(_x: _FloatArray, y: _FloatArray) -> _FloatArray:
        t = np.clip((y - top_y) / (bottom_y - top_y), 0.0, 1.0)[:, :, None]
        return top_colour * (1.0 - t) + bottom_colour * t

    return field


def _lit_skin(x: _FloatArray, y: _FloatArray) -> _FloatArray:
    """Skin colour lit from the upper left, a little darker towards the lower right."""
    light = 1.0 + 0.07 * (-(x - _CENTER_X) / 110.0) + 0.04 * (-(y - 300.0) / 160.0)
    return np.array(_SKIN, dtype=np.float32)[None, None, :] * light[:, :, None]


# Layers


@lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    """Draw the wall: a vertical gradient, a soft light behind the head and the body's shadow."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    wall = (
        np.array(_WALL_TOP, dtype=np.float32) * (1.0 - rows)
        + np.array(_WALL_BOTTOM, dtype=np.float32) * rows
    )
    wall = np.broadcast_to(wall, (height, width, 3)).copy()

    scale, offset_x = _design_scale(width, height)
    grid_x = (np.arange(width, dtype=np.float32) - offset_x) / scale
    grid_y = np.arange(height, dtype=np.float32) / scale
    distance = np.hypot((grid_x[None, :] - 600.0) / 520.0, (grid_y[:, None] - 260.0) / 420.0)
    wall *= (1.0 + 0.10 * np.exp(-(distance**2)) - 0.06 * np.clip(distance - 0.8, 0.0, None))[
        :, :, None
    ]

    # Soft shadow of the person on the wall, cast down and to the right.
    shadow = np.zeros((height, width), dtype=np.uint8)
    outline = [
        _ellipse((658.0, 300.0), (125.0, 160.0)),
        _to_design_polygon(_shoulder_outline(), dx=18.0, dy=10.0),
    ]
    pixel_shapes = [
        np.round(_to_frame(shape, width, height) * 16.0).astype(np.int32) for shape in outline
    ]
    cv2.fillPoly(shadow, pixel_shapes, 255, cv2.LINE_AA, shift=4)
    shadow = cv2.GaussianBlur(shadow.astype(np.float32) / 255.0, (0, 0), 28.0 * scale)
    wall *= (1.0 - 0.22 * shadow)[:, :, None]

    # Fixed-seed noise of under one grey level hides banding in the gradient.
    noise = np.random.default_rng(7).uniform(-0.6, 0.6, size=(height, width, 1))
    return np.clip(wall + noise + 0.5, 0, 255).astype(np.uint8)


def _to_design_polygon(points: _FloatArray, *, dx: float, dy: float) -> _FloatArray:
    return np.asarray(points, dtype=np.float64) + [dx, dy]


def _shoulder_outline() -> _FloatArray:
    right = [
        (640.0, 512.0),
        (700.0, 508.0),
        (760.0, 528.0),
        (860.0, 560.0),
        (950.0, 600.0),
        (1000.0, 660.0),
        (1018.0, 760.0),
    ]
    left = _mirror(right[1:])[::-1]
    return _spline(left + right, closed=False, steps=10)


@lru_cache(maxsize=4)
def _body_sprite(width: int, height: int) -> _Sprite:
    """Draw the neck and the shoulders in a crew-neck shirt."""
    canvas = _Canvas(_BODY_REGION, width, height)

    neck = _spline(
        [(584.0, 390.0), (588.0, 470.0), (578.0, 525.0), (640.0, 540.0)]
        + _mirror([(578.0, 525.0), (588.0, 470.0), (584.0, 390.0)]),
        closed=True,
    )
    canvas.paint([neck], _vertical_gradient(420.0, 540.0, _SKIN_SHADOW, _SKIN))
    # Shadow under the jaw and at the sides of the neck.
    canvas.paint(
        [_ellipse((640.0, 455.0), (70.0, 40.0))],
        _SKIN_SHADOW,
        opacity=0.8,
        blur=10.0,
        inside_only=True,
    )
    for side in (-1.0, 1.0):
        canvas.paint(
            [_ellipse((640.0 + side * 56.0, 480.0), (12.0, 70.0))],
            _SKIN_SHADOW,
            opacity=0.6,
            blur=6.0,
            inside_only=True,
        )

    shirt = np.concatenate([_shoulder_outline(), [[1018.0, 760.0], [262.0, 760.0]]])
    canvas.paint([shirt], _shirt_colour)
    # Crew-neck collar: a rib band around the neck line.
    collar = _spline([(575.0, 512.0), (640.0, 546.0), (705.0, 512.0)], closed=False, steps=16)
    canvas.paint([collar], _SHIRT_DARK, stroke=9.0, opacity=0.9, inside_only=True)
    canvas.paint(
        [collar + [0.0, 7.0]], (150, 112, 72), stroke=2.0, opacity=0.5, blur=0.8, inside_only=True
    )
    # Folds from the shoulders towards the chest.
    for side in (-1.0, 1.0):
        fold = _spline(
            [
                (640.0 + side * 150.0, 575.0),
                (640.0 + side * 120.0, 640.0),
                (640.0 + side * 115.0, 720.0),
            ],
            closed=False,
        )
        canvas.paint([fold], _SHIRT_DARK, stroke=10.0, opacity=0.35, blur=6.0, inside_only=True)
    return canvas.to_sprite()


def _shirt_colour(x: _FloatArray, y: _FloatArray) -> _FloatArray:
    """Shirt colour, lighter at the chest and darker towards the arms and the bottom edge."""
    side = np.clip(np.abs(x - _CENTER_X) / 360.0, 0.0, 1.0)
    t = np.clip(side**1.6 + 0.25 * np.clip((y - 600.0) / 120.0, 0.0, 1.0), 0.0, 1.0)
    base = np.array(_SHIRT, dtype=np.float32)
    dark = np.array(_SHIRT_DARK, dtype=np.float32)
    return base * (1.0 - t[:, :, None]) + dark * t[:, :, None]


def _head_outline() -> _FloatArray:
    """Outline of the head: a rounded skull over a jaw that narrows to the chin."""
    skull = _ellipse((640.0, 282.0), (112.0, 138.0), start=180.0, end=360.0, count=60)
    jaw_right = [(752.0, 282.0), (749.0, 330.0), (738.0, 378.0), (714.0, 422.0), (676.0, 456.0)]
    jaw = _spline(jaw_right + [(640.0, 466.0)] + _mirror(jaw_right)[::-1], closed=False, steps=10)
    return np.concatenate([skull, jaw[1:-1]])


@lru_cache(maxsize=12)
def _head_sprite(width: int, height: int, eye_state: int) -> _Sprite:
    canvas = _head_canvas(width, height).copy()
    _draw_eyes(canvas, eye_state)
    return canvas.to_sprite()


@lru_cache(maxsize=4)
def _head_canvas(width: int, height: int) -> _Canvas:
    """Draw the head without the eyes, which depend on the blink state."""
    canvas = _Canvas(_HEAD_REGION, width, height)
    _draw_ears(canvas)
    canvas.paint([_head_outline()], _lit_skin)
    canvas.shade_edges(depth=16.0, strength=0.30, colour=_SKIN_SHADOW)
    _draw_face_shading(canvas)
    _draw_nose(canvas)
    _draw_lips(canvas)
    _draw_hair(canvas)
    _draw_eyebrows(canvas)
    return canvas


def _draw_ears(canvas: _Canvas) -> None:
    for side in (-1.0, 1.0):
        x = _CENTER_X + side * 110.0
        canvas.paint([_ellipse((x, 318.0), (20.0, 36.0), angle=side * 8.0)], _SKIN_SHADOW)
        canvas.paint(
            [_ellipse((x + side * 2.0, 316.0), (14.0, 29.0), angle=side * 8.0)],
            _SKIN,
            opacity=0.7,
            blur=2.0,
            inside_only=True,
        )
        canvas.paint(
            [_ellipse((x + side * 3.0, 318.0), (6.0, 16.0), angle=side * 8.0)],
            (80, 100, 150),
            opacity=0.6,
            blur=2.0,
            inside_only=True,
        )


def _draw_face_shading(canvas: _Canvas) -> None:
    """Add soft shading that gives the face volume: sockets, cheeks, temples and chin."""
    for side in (-1.0, 1.0):
        x = _CENTER_X + side * 48.0
        canvas.paint(
            [_ellipse((x, 282.0), (34.0, 20.0))],
            _SKIN_SHADOW,
            opacity=0.35,
            blur=7.0,
            inside_only=True,
        )
        canvas.paint(
            [_ellipse((_CENTER_X + side * 62.0, 352.0), (26.0, 16.0))],
            (118, 128, 226),
            opacity=0.22,
            blur=9.0,
            inside_only=True,
        )
        canvas.paint(
            [_ellipse((_CENTER_X + side * 96.0, 390.0), (14.0, 50.0), angle=-side * 20.0)],
            _SKIN_SHADOW,
            opacity=0.35,
            blur=10.0,
            inside_only=True,
        )
    canvas.paint(
        [_ellipse((640.0, 446.0), (26.0, 10.0))],
        (178, 202, 238),
        opacity=0.35,
        blur=6.0,
        inside_only=True,
    )
    canvas.paint(
        [_ellipse((640.0, 428.0), (20.0, 5.0))],
        _SKIN_SHADOW,
        opacity=0.45,
        blur=4.0,
        inside_only=True,
    )


def _draw_nose(canvas: _Canvas) -> None:
    # Shadow along the shaded side of the bridge and under the tip.
    bridge = _spline([(652.0, 300.0), (656.0, 330.0), (660.0, 352.0)], closed=False)
    canvas.paint([bridge], _SKIN_SHADOW, stroke=5.0, opacity=0.45, blur=3.5, inside_only=True)
    canvas.paint(
        [_ellipse((642.0, 377.0), (22.0, 5.0))],
        _SKIN_SHADOW,
        opacity=0.55,
        blur=3.0,
        inside_only=True,
    )
    # Tip highlight and nostril wings.
    canvas.paint(
        [_ellipse((638.0, 355.0), (10.0, 8.0))],
        (180, 205, 240),
        opacity=0.55,
        blur=3.0,
        inside_only=True,
    )
    for side in (-1.0, 1.0):
        canvas.paint(
            [_ellipse((_CENTER_X + side * 18.0, 366.0), (9.0, 7.0))],
            _SKIN_SHADOW,
            opacity=0.3,
            blur=2.5,
            inside_only=True,
        )
        # Outer rim of the nostril wing, from above the wing round to the cheek.
        start, end = (-100.0, 70.0) if side > 0 else (110.0, 280.0)
        wing = _ellipse(
            (_CENTER_X + side * 15.0, 363.0), (9.0, 9.0), start=start, end=end, count=16
        )
        canvas.paint([wing], (92, 112, 162), stroke=2.0, opacity=0.45, blur=1.2, inside_only=True)
        canvas.paint(
            [_ellipse((_CENTER_X + side * 8.0, 369.0), (5.0, 2.6), angle=side * 15.0)],
            (50, 60, 100),
            opacity=0.85,
            blur=0.8,
            inside_only=True,
        )


def _draw_lips(canvas: _Canvas) -> None:
    """Draw closed lips whose lip line passes through the mouth centre ``_MOUTH``."""
    mouth_x, mouth_y = _MOUTH
    half = _LIP_HALF_WIDTH
    lift = _LIP_CORNER_LIFT
    offsets = np.linspace(-half, half, 21)
    line_points = np.stack([mouth_x + offsets, mouth_y - lift * (offsets / half) ** 2], axis=1)

    upper_top = _spline(
        [
            (mouth_x - half, mouth_y - lift),
            (mouth_x - 24.0, mouth_y - 8.0),
            (mouth_x - 9.0, mouth_y - 11.5),
            (mouth_x, mouth_y - 9.0),
            (mouth_x + 9.0, mouth_y - 11.5),
            (mouth_x + 24.0, mouth_y - 8.0),
            (mouth_x + half, mouth_y - lift),
        ],
        closed=False,
    )
    lower_bottom = _spline(
        [
            (mouth_x + half, mouth_y - lift),
            (mouth_x + 24.0, mouth_y + 9.0),
            (mouth_x, mouth_y + 13.0),
            (mouth_x - 24.0, mouth_y + 9.0),
            (mouth_x - half, mouth_y - lift),
        ],
        closed=False,
    )
    canvas.paint([np.concatenate([upper_top, line_points[::-1]])], _LIP_UPPER, blur=0.5)
    canvas.paint([np.concatenate([line_points, lower_bottom])], _LIP_LOWER, blur=0.5)

    # Highlight on the lower lip, a dark lip line and small shadows at the corners.
    canvas.paint(
        [_ellipse((mouth_x + 2.0, mouth_y + 6.5), (14.0, 3.0))],
        (160, 162, 222),
        opacity=0.6,
        blur=1.5,
    )
    canvas.paint([line_points], (52, 50, 92), stroke=1.8, opacity=0.9, blur=0.4)
    for side in (-1.0, 1.0):
        canvas.paint(
            [_ellipse((mouth_x + side * (half + 1.0), mouth_y - 2.0), (3.0, 3.0))],
            _SKIN_SHADOW,
            opacity=0.5,
            blur=1.5,
            inside_only=True,
        )


def _draw_hair(canvas: _Canvas) -> None:
    """Draw short hair parted on the left, swept across the forehead, with lighter strands."""
    right = [(758.0, 318.0), (766.0, 250.0), (748.0, 185.0), (700.0, 140.0), (640.0, 124.0)]
    left = _mirror(right[::-1][1:])
    hairline = [
        (745.0, 292.0),
        (738.0, 256.0),
        (712.0, 232.0),
        (672.0, 218.0),
        (634.0, 206.0),
        (604.0, 200.0),
        (574.0, 210.0),
        (550.0, 236.0),
        (537.0, 280.0),
    ]
    outer = right + left + [(524.0, 318.0), (530.0, 300.0)]
    shape = _spline(outer + hairline[::-1], closed=True, steps=10)
    canvas.paint([shape], _vertical_gradient(130.0, 300.0, _HAIR_LIGHT, _HAIR), blur=0.6)

    # Strands start at the parting (x = 600) and sweep down to either side.
    rng = np.random.default_rng(11)
    for i in range(34):
        side = -1.0 if i % 3 == 0 else 1.0
        reach = rng.uniform(0.35, 1.0)
        start = (600.0 + rng.uniform(-4.0, 4.0), 132.0 + rng.uniform(0.0, 60.0))
        if side > 0:
            end = (600.0 + 150.0 * reach, start[1] + 60.0 + 70.0 * reach)
            middle = (0.5 * (start[0] + end[0]) + 8.0, 0.5 * (start[1] + end[1]) - 22.0)
        else:
            end = (600.0 - 75.0 * reach, start[1] + 50.0 + 80.0 * reach)
            middle = (0.5 * (start[0] + end[0]) - 6.0, 0.5 * (start[1] + end[1]) - 14.0)
        strand = _spline([start, middle, end], closed=False)
        colour = (84, 104, 134) if i % 2 else (18, 24, 36)
        canvas.paint([strand], colour, stroke=1.5, opacity=0.35, blur=0.7, clip=shape)
    parting = _spline([(600.0, 134.0), (601.0, 170.0), (604.0, 198.0)], closed=False)
    canvas.paint([parting], (20, 26, 38), stroke=2.0, opacity=0.5, blur=1.2, clip=shape)
    # Shadow the hair casts on the forehead.
    canvas.paint(
        [np.array(hairline)], _SKIN_SHADOW, stroke=6.0, opacity=0.4, blur=4.0, inside_only=True
    )


def _draw_eyebrows(canvas: _Canvas) -> None:
    for side in (-1.0, 1.0):
        inner = _CENTER_X + side * 18.0
        outer = _CENTER_X + side * 82.0
        top = _spline(
            [(inner, 258.0), (_CENTER_X + side * 48.0, 248.0), (outer, 256.0)], closed=False
        )
        bottom = _spline(
            [(outer, 259.0), (_CENTER_X + side * 48.0, 255.0), (inner, 266.0)], closed=False
        )
        canvas.paint([np.concatenate([top, bottom])], _HAIR, opacity=0.92, blur=0.9)


def _draw_eyes(canvas: _Canvas, eye_state: int) -> None:
    """Draw both eyes open, half closed or closed."""
    openness = {_EYE_OPEN: 1.0, _EYE_HALF: 0.4, _EYE_CLOSED: 0.0}[eye_state]
    for side in (-1.0, 1.0):
        center_x = _CENTER_X + side * 48.0
        center_y = 286.0
        half_width = 24.0
        corner_inner = (center_x - side * half_width, center_y + 1.0)
        corner_outer = (center_x + side * half_width, center_y - 1.0)
        lower = _spline(
            [corner_outer, (center_x, center_y + 9.0), corner_inner], closed=False, steps=16
        )
        lid_height = 2.0 + 8.0 * openness
        upper = _spline(
            [corner_inner, (center_x - side * 4.0, center_y - lid_height), corner_outer],
            closed=False,
            steps=16,
        )
        if openness > 0.0:
            eye = np.concatenate([upper, lower])
            canvas.paint([eye], _SCLERA, blur=0.4)
            iris_y = center_y + 1.0
            iris_center = (center_x - side * 1.5, iris_y)
            canvas.paint([_ellipse(iris_center, (9.5, 9.5))], _IRIS, blur=0.4, clip=eye)
            canvas.paint(
                [_ellipse(iris_center, (9.5, 9.5))], (40, 58, 80), stroke=1.2, opacity=0.8, clip=eye
            )
            canvas.paint([_ellipse(iris_center, (4.6, 4.6))], _PUPIL, blur=0.3, clip=eye)
            canvas.paint(
                [_ellipse((iris_center[0] + 3.0, iris_y - 3.5), (2.2, 2.2))],
                (250, 250, 250),
                opacity=0.9,
                blur=0.3,
                clip=eye,
            )
            # The upper lid shades the top of the eyeball.
            canvas.paint(
                [upper + [0.0, 2.5]], (120, 130, 150), stroke=3.0, opacity=0.45, blur=1.2, clip=eye
            )
            canvas.paint([lower], (110, 128, 170), stroke=1.2, opacity=0.5, blur=0.5)
        else:
            lid = np.concatenate([upper, lower])
            canvas.paint([lid], _SKIN_SHADOW, opacity=0.5, blur=0.5)
        # Upper lid line with lashes, and the lid crease above it.
        canvas.paint([upper], (30, 32, 40), stroke=2.6, opacity=0.95, blur=0.3)
        crease = upper + [0.0, -6.0 - 2.0 * openness]
        canvas.paint(
            [crease[2:-2]], _SKIN_SHADOW, stroke=1.5, opacity=0.5, blur=0.8, inside_only=True
        )
