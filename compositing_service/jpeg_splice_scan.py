"""Baseline JPEG encoding with restart markers, and parsing of such files into restart intervals.

Splicing (`compositing_service.jpeg_splice`) copies restart intervals from one JPEG into another.
That only reproduces a full-frame encode when both files come from the same encoder with the same
quantisation and Huffman tables. The encoder settings are therefore fixed here: OpenCV's
libjpeg-turbo, 4:2:0 chroma subsampling, no progressive mode and no Huffman optimisation, which
means the standard tables of ITU-T T.81 Annex K.3.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.errors import InvalidArgument

MCU_SIZE = 16  # pixels per MCU side: with 4:2:0 an MCU is 2x2 luma blocks of 8x8
MAX_RESTART_INTERVAL = 65535  # the DRI segment stores the interval in 16 bits
MIN_QUALITY, MAX_QUALITY = 1, 100

EOI = b"\xff\xd9"
_SOI = b"\xff\xd8"
_SOF0, _DHT, _DQT, _DRI, _SOS = 0xC0, 0xC4, 0xDB, 0xDD, 0xDA
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length field
_RST_PATTERN = re.compile(rb"\xff[\xd0-\xd7]")
_RESTART_MARKERS = tuple(bytes((0xFF, 0xD0 + n)) for n in range(8))

# Horizontal and vertical sampling factors of Y, Cb and Cr for 4:2:0.
_SAMPLING_420 = ((2, 2), (1, 1), (1, 1))


class JpegLayoutError(ValueError):
    """A JPEG file does not have the baseline, restart-marked layout that splicing needs."""


def restart_marker(interval_index: int) -> bytes:
    """Return RSTn with n = `interval_index` mod 8, the marker that follows that interval."""
    return _RESTART_MARKERS[interval_index % 8]


def mcu_counts(width: int, height: int) -> tuple[int, int]:
    """Return (MCU columns, MCU rows) of a 4:2:0 frame, counting partial edge MCUs."""
    return -(-width // MCU_SIZE), -(-height // MCU_SIZE)


def check_quality(quality: int) -> None:
    """Raise InvalidArgument unless `quality` is a JPEG quality OpenCV accepts (1-100)."""
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise InvalidArgument(
            f"jpeg_quality {quality} is out of range: use {MIN_QUALITY}-{MAX_QUALITY}"
        )


def encode_baseline_jpeg(image: np.ndarray, quality: int, restart_interval: int = 0) -> bytes:
    """Encode a BGR image as a baseline 4:2:0 JPEG with the standard Huffman tables.

    Parameters
    ----------
    image : np.ndarray [H, W, 3] uint8 BGR
        May be a view into a larger array (a region of a frame).
    quality : int
        JPEG quality, 1-100 (the IJG quality scale of the quantisation tables).
    restart_interval : int
        MCUs (16x16 pixels) per restart interval, 1-65535, or 0 for no restart markers.

    Returns
    -------
    bytes
        The JPEG file. With restart_interval 0 it is byte-identical to
        ``cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])``.
    """
    check_quality(quality)
    if not 0 <= restart_interval <= MAX_RESTART_INTERVAL:
        raise InvalidArgument(
            f"restart_interval {restart_interval} is out of range: use 0-{MAX_RESTART_INTERVAL} "
            "MCUs, 0 for no restart markers"
        )
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        cv2.IMWRITE_JPEG_OPTIMIZE,
        0,
        cv2.IMWRITE_JPEG_PROGRESSIVE,
        0,
        cv2.IMWRITE_JPEG_RST_INTERVAL,
        restart_interval,
    ]
    ok, data = cv2.imencode(".jpg", image, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as JPEG")
    return data.tobytes()


@dataclass(frozen=True)
class ScanLayout:
    """A baseline JPEG file split into its header, its restart intervals and EOI.

    The file is ``header + scan + EOI``. Interval i is ``scan[starts[i]:ends[i]]``, and every
    interval but the last is followed by RST(i mod 8) at ``ends[i]``. Interval bytes keep their
    byte stuffing (0xFF 0x00), so they can be copied into another scan unchanged.
    """

    header: bytes  # from SOI to the end of the SOS segment
    scan: bytes  # entropy-coded data between the SOS segment and EOI, RST markers included
    starts: array  # typecode "Q", 8 bytes per interval, because a list of ints takes about 36
    ends: array
    width: int
    height: int
    restart_interval: int  # MCUs per interval, 0 without a DRI segment
    tables: bytes  # the DQT and DHT segments in file order, to compare two encoders' settings
    scan_header: bytes  # the SOS segment

    @property
    def interval_count(self) -> int:
        return len(self.starts)


def _read_frame_header(segment: bytes) -> tuple[int, int]:
    """Return (width, height) from an SOF0 segment body after checking 8-bit YCbCr 4:2:0."""
    precision = segment[0]
    height = int.from_bytes(segment[1:3], "big")
    width = int.from_bytes(segment[3:5], "big")
    components = segment[5]
    sampling = tuple((segment[7 + 3 * c] >> 4, segment[7 + 3 * c] & 0x0F) for c in range(3))
    if precision != 8 or components != 3 or sampling != _SAMPLING_420:
        raise JpegLayoutError(
            f"frame header has precision {precision}, {components} components and sampling "
            f"{sampling}, expected 8 bits, 3 components and 4:2:0 {_SAMPLING_420}"
        )
    return width, height


def parse_scan_layout(data: bytes) -> ScanLayout:
    """Split a baseline, single-scan JPEG file into header, restart intervals and EOI.

    Raises
    ------
    JpegLayoutError
        If the file is not baseline (SOF0) YCbCr 4:2:0, lacks EOI at its end, or its RST
        markers are not RST0..RST7 in cyclic order.
    """
    if not data.startswith(_SOI):
        raise JpegLayoutError("data does not start with the SOI marker")
    if not data.endswith(EOI):
        raise JpegLayoutError("data does not end with the EOI marker")

    width = height = None
    restart_interval = 0
    tables: list[bytes] = []
    position = len(_SOI)
    while True:
        if position + 4 > len(data) or data[position] != 0xFF:
            raise JpegLayoutError(f"expected a marker segment at byte {position}")
        marker = data[position + 1]
        if marker in _STANDALONE_MARKERS:
            raise JpegLayoutError(f"unexpected marker 0x{marker:02x} at byte {position}")
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment_end = position + 2 + length
        body = data[position + 4 : segment_end]
        if marker == _SOF0:
            width, height = _read_frame_header(body)
        elif 0xC1 <= marker <= 0xCF and marker not in (_DHT, 0xC8, 0xCC):
            raise JpegLayoutError(f"frame marker 0x{marker:02x} is not baseline (SOF0)")
        elif marker in (_DQT, _DHT):
            tables.append(data[position:segment_end])
        elif marker == _DRI:
            restart_interval = int.from_bytes(body[:2], "big")
        elif marker == _SOS:
            scan_header = data[position:segment_end]
            break
        position = segment_end

    if width is None or height is None:
        raise JpegLayoutError("no SOF0 frame header before the scan")

    header = data[:segment_end]
    scan = data[segment_end : -len(EOI)]
    starts = array("Q", [0])
    ends = array("Q")
    for index, match in enumerate(_RST_PATTERN.finditer(scan)):
        if scan[match.start() + 1] != 0xD0 + index % 8:
            raise JpegLayoutError(
                f"restart marker {index} is RST{scan[match.start() + 1] - 0xD0}, "
                f"expected RST{index % 8}"
            )
        ends.append(match.start())
        starts.append(match.end())
    ends.append(len(scan))
    if scan.count(b"\xff") != scan.count(b"\xff\x00") + len(ends) - 1:
        raise JpegLayoutError("entropy-coded data contains a marker other than RST0-RST7")

    return ScanLayout(
        header=header,
        scan=scan,
        starts=starts,
        ends=ends,
        width=width,
        height=height,
        restart_interval=restart_interval,
        tables=b"".join(tables),
        scan_header=scan_header,
    )


def check_layout(layout: ScanLayout, width: int, height: int, restart_interval: int) -> None:
    """Raise JpegLayoutError unless `layout` is a whole frame of this size and restart interval."""
    columns, rows = mcu_counts(width, height)
    expected_intervals = columns * rows // restart_interval
    if (layout.width, layout.height) != (width, height):
        raise JpegLayoutError(f"frame header has size {layout.width}x{layout.height}")
    if layout.restart_interval != restart_interval:
        raise JpegLayoutError(
            f"DRI segment has a restart interval of {layout.restart_interval} MCUs"
        )
    if layout.interval_count != expected_intervals:
        raise JpegLayoutError(
            f"scan has {layout.interval_count} restart intervals, expected {expected_intervals}"
        )
