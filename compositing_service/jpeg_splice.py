"""Per-frame JPEG encoding that re-encodes only the changed region of a cached background.

A background is encoded once with a restart marker every R MCUs, where R divides the MCUs per
MCU row. The encoder resets the DC predictors and pads the bit stream to a byte boundary at every
restart marker, so each restart interval's bytes depend only on the pixels of its R MCUs.
For a frame that differs from the background inside a box, only the MCU rows and interval
columns that cover the box are encoded, as a small JPEG with the same settings. Its intervals
then replace the background's. The RST markers after the copied intervals are rewritten to RSTn
with n = interval index mod 8, the numbering of the full frame, because decoders check it. The
result is byte-identical to encoding the whole frame with the same restart interval.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from compositing_service.jpeg_splice_scan import (
    EOI,
    MCU_SIZE,
    JpegLayoutError,
    ScanLayout,
    check_layout,
    check_quality,
    encode_baseline_jpeg,
    mcu_counts,
    parse_scan_layout,
    restart_marker,
)
from lipsync.errors import InvalidArgument

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESTART_INTERVAL = 8
MAX_FRAME_SIDE = 65500  # the largest JPEG width or height libjpeg encodes

_reported_fallbacks: set[str] = set()
_reported_fallbacks_lock = threading.Lock()


def _log_fallback_once(reason: str) -> None:
    with _reported_fallbacks_lock:
        if reason in _reported_fallbacks:
            return
        _reported_fallbacks.add(reason)
    logger.warning("JPEG splicing disabled, encoding whole frames instead: %s", reason)


def choose_restart_interval(width: int, max_interval: int = DEFAULT_MAX_RESTART_INTERVAL) -> int:
    """Choose the restart interval (in MCUs) for splicing frames `width` pixels wide.

    Returns the largest divisor of the MCUs per row that is at most `max_interval`. When that
    divisor is below ``max_interval // 2``, as for a prime number of MCU columns, returns the
    whole MCU row instead. Each interval adds about 4 bytes to every frame, so tiny intervals
    cost more bandwidth than whole-row intervals cost in re-encoding wider regions.
    """
    if max_interval < 1:
        raise InvalidArgument(f"max_interval {max_interval} is out of range: use 1 or more MCUs")
    columns = -(-width // MCU_SIZE)
    divisor = max(d for d in range(1, min(max_interval, columns) + 1) if columns % d == 0)
    if divisor < max_interval // 2:
        return columns
    return divisor


def _check_image(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidArgument(f"{name} has shape {shape}, expected [H, W, 3] BGR")
    if image.dtype != np.uint8:
        raise InvalidArgument(f"{name} has dtype {image.dtype}, expected uint8")
    height, width = image.shape[:2]
    if not (1 <= width <= MAX_FRAME_SIDE and 1 <= height <= MAX_FRAME_SIDE):
        raise InvalidArgument(
            f"{name} is {width}x{height} pixels, expected 1-{MAX_FRAME_SIDE} on each side"
        )


class SplicedBackground:
    """A background frame encoded once, so that each output frame encodes only its changed region.

    Create with `SplicedBackground.build`. When splicing cannot reproduce a full-frame encode
    (see `build`), `spliceable` is False and the encode methods encode the whole frame without
    restart markers. Instances are immutable and can be shared between threads.
    """

    def __init__(
        self,
        background: np.ndarray,
        quality: int,
        restart_interval: int,
        layout: ScanLayout | None,
        fallback_reason: str | None,
    ) -> None:
        self.background = background
        self.quality = quality
        self.restart_interval = restart_interval
        self.fallback_reason = fallback_reason
        self._layout = layout
        self.height, self.width = background.shape[:2]
        columns, _ = mcu_counts(self.width, self.height)
        self._intervals_per_row = columns // restart_interval if layout is not None else 0
        self._region_step = MCU_SIZE * restart_interval

    @property
    def spliceable(self) -> bool:
        return self._layout is not None

    @classmethod
    def build(
        cls, background: np.ndarray, quality: int, restart_interval: int | None = None
    ) -> SplicedBackground:
        """Encode a background frame with restart markers and index its restart intervals.

        Parameters
        ----------
        background : np.ndarray [H, W, 3] uint8 BGR
            Kept by reference and read by every encode, so it must not change afterwards.
        quality : int
            JPEG quality, 1-100, of every frame encoded from this background.
        restart_interval : int, optional
            MCUs per restart interval. The default is `choose_restart_interval` of the width.

        Returns
        -------
        SplicedBackground
            Not spliceable when the restart interval does not divide the MCUs per row, or when
            the encoder's output does not have the layout splicing needs. That layout is
            baseline 4:2:0 with the requested restart interval, and region encodes whose tables
            and edge intervals equal the full encode's. Each distinct reason is logged once.
        """
        _check_image("background", background)
        check_quality(quality)
        height, width = background.shape[:2]
        columns, rows = mcu_counts(width, height)
        if restart_interval is None:
            restart_interval = choose_restart_interval(width)
        if restart_interval < 1:
            raise InvalidArgument(
                f"restart_interval {restart_interval} is out of range: use 1 or more MCUs"
            )

        if columns % restart_interval:
            reason = (
                f"restart interval {restart_interval} MCUs does not divide the {columns} MCUs "
                f"per row of {width}x{height} frames"
            )
            _log_fallback_once(reason)
            return cls(background, quality, restart_interval, None, reason)

        data = encode_baseline_jpeg(background, quality, restart_interval)
        try:
            layout = parse_scan_layout(data)
            check_layout(layout, width, height, restart_interval)
            _check_edge_intervals(background, quality, restart_interval, layout)
        except JpegLayoutError as error:
            reason = (
                f"the encoder's output for {width}x{height} frames at quality {quality} and "
                f"restart interval {restart_interval} cannot be spliced: {error}"
            )
            _log_fallback_once(reason)
            return cls(background, quality, restart_interval, None, reason)
        return cls(background, quality, restart_interval, layout, None)

    @property
    def background_jpeg(self) -> bytes:
        """The background's own JPEG: with restart markers when spliceable, else without."""
        if self._layout is None:
            return encode_baseline_jpeg(self.background, self.quality)
        return self._layout.header + self._layout.scan + EOI

    def region_for(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Return the region (x1, y1, x2, y2), exclusive ends, re-encoded for a change in `box`.

        The region is the box widened to whole MCU rows and whole restart intervals, clipped to
        the frame. It is the whole frame when the background is not spliceable.
        """
        x1, y1, x2, y2 = self._check_box(box)
        if self._layout is None:
            return 0, 0, self.width, self.height

        step = self._region_step
        return (
            x1 // step * step,
            y1 // MCU_SIZE * MCU_SIZE,
            min(self.width, -(-x2 // step) * step),
            min(self.height, -(-y2 // MCU_SIZE) * MCU_SIZE),
        )

    def encode_patch(self, patch: np.ndarray, x: int, y: int) -> bytes:
        """Encode the background with `patch` pasted at column `x`, row `y`.

        Parameters
        ----------
        patch : np.ndarray [h, w, 3] uint8 BGR
            Must lie entirely inside the frame.
        x, y : int
            Position of the patch's top-left pixel in the frame.

        Returns
        -------
        bytes
            A JPEG byte-identical to `encode_baseline_jpeg` of the pasted frame with this
            background's quality and restart interval (without restart markers when not
            spliceable). The background itself is not modified.
        """
        _check_image("patch", patch)
        height, width = patch.shape[:2]
        rx1, ry1, rx2, ry2 = self.region_for((x, y, x + width, y + height))

        pixels = self.background[ry1:ry2, rx1:rx2].copy()
        pixels[y - ry1 : y - ry1 + height, x - rx1 : x - rx1 + width] = patch
        if self._layout is None:
            return encode_baseline_jpeg(pixels, self.quality)
        return self._splice(pixels, rx1, ry1)

    def encode_frame(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
        """Encode a frame that equals the background outside `box`.

        Parameters
        ----------
        frame : np.ndarray [H, W, 3] uint8 BGR, the background's size
            Only the pixels in ``region_for(box)`` are read. The output shows the background
            elsewhere, even where `frame` differs from it.
        box : (x1, y1, x2, y2)
            The changed pixels, x2 and y2 exclusive, inside the frame. An empty box returns
            `background_jpeg`.

        Returns
        -------
        bytes
            A JPEG byte-identical to `encode_baseline_jpeg` of the frame with this background's
            quality and restart interval (without restart markers when not spliceable).
        """
        _check_image("frame", frame)
        if frame.shape != self.background.shape:
            raise InvalidArgument(
                f"frame has shape {frame.shape}, expected the background's {self.background.shape}"
            )
        rx1, ry1, rx2, ry2 = self.region_for(box)
        if box[0] == box[2] or box[1] == box[3]:
            return self.background_jpeg
        if self._layout is None:
            return encode_baseline_jpeg(frame, self.quality)
        return self._splice(frame[ry1:ry2, rx1:rx2], rx1, ry1)

    def _check_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = (int(v) for v in box)
        if not (0 <= x1 <= x2 <= self.width and 0 <= y1 <= y2 <= self.height):
            raise InvalidArgument(
                f"box ({x1}, {y1}, {x2}, {y2}) is outside the {self.width}x{self.height} frame: "
                f"expected 0 <= x1 <= x2 <= {self.width} and 0 <= y1 <= y2 <= {self.height}"
            )
        return x1, y1, x2, y2

    def _splice(self, pixels: np.ndarray, x: int, y: int) -> bytes:
        """Encode the region `pixels` whose top-left pixel is at the MCU-aligned (x, y)."""
        layout = self._layout
        height, width = pixels.shape[:2]
        if width == 0 or height == 0:
            return layout.header + layout.scan + EOI

        region = parse_scan_layout(
            encode_baseline_jpeg(pixels, self.quality, self.restart_interval)
        )
        intervals_wide = -(-width // self._region_step)
        rows = -(-height // MCU_SIZE)
        if region.interval_count != rows * intervals_wide:
            raise RuntimeError(
                f"the {width}x{height} region encode has {region.interval_count} restart "
                f"intervals, expected {rows * intervals_wide}"
            )

        scan = memoryview(layout.scan)
        region_scan = memoryview(region.scan)
        last_index = layout.interval_count - 1
        first_column = x // self._region_step
        first_row = y // MCU_SIZE
        pieces: list[bytes | memoryview] = [layout.header]
        position = 0
        for row in range(rows):
            first = (first_row + row) * self._intervals_per_row + first_column
            pieces.append(scan[position : layout.starts[first]])

            for column in range(intervals_wide):
                source = row * intervals_wide + column
                pieces.append(region_scan[region.starts[source] : region.ends[source]])
                if first + column < last_index:
                    pieces.append(restart_marker(first + column))

            following = first + intervals_wide
            position = layout.starts[following] if following <= last_index else len(layout.scan)

        pieces.append(scan[position:])
        pieces.append(EOI)
        return b"".join(pieces)


def _check_edge_intervals(
    background: np.ndarray, quality: int, restart_interval: int, layout: ScanLayout
) -> None:
    """Check that region encodes of the first and last interval reproduce the full encode's.

    This catches encoders that choose tables per image (Huffman optimisation) and edge padding
    that a region encode does not reproduce, before any frame relies on them.
    """
    height, width = background.shape[:2]
    columns, rows = mcu_counts(width, height)
    step = MCU_SIZE * restart_interval
    probes = {
        0: background[:MCU_SIZE, :step],
        layout.interval_count - 1: background[
            (rows - 1) * MCU_SIZE :, (columns * MCU_SIZE - step) :
        ],
    }
    for index, pixels in probes.items():
        probe = parse_scan_layout(encode_baseline_jpeg(pixels, quality, restart_interval))
        if probe.tables != layout.tables or probe.scan_header != layout.scan_header:
            raise JpegLayoutError("a region encode has different DQT, DHT or SOS segments")
        if probe.scan != layout.scan[layout.starts[index] : layout.ends[index]]:
            raise JpegLayoutError(f"a region encode of restart interval {index} differs")
