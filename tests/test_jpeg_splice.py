"""JPEG splicing: byte identity with full-frame encodes, clean decodes, fallbacks and bad input."""

from __future__ import annotations

import io
import logging
import warnings
from functools import cache

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from compositing_service import jpeg_splice
from compositing_service.jpeg_splice import SplicedBackground, choose_restart_interval
from compositing_service.jpeg_splice_scan import (
    EOI,
    JpegLayoutError,
    encode_baseline_jpeg,
    mcu_counts,
    parse_scan_layout,
    restart_marker,
)
from lipsync.demo.face import draw_frame
from lipsync.errors import InvalidArgument

QUALITIES = (50, 75, 95)

# (content, width, height, restart interval or None for the default)
FRAME_CASES = [
    ("demo", 1280, 720, None),
    ("random", 1280, 720, None),
    ("demo", 1278, 718, None),  # partial MCUs at the right and bottom edges
    ("random", 1270, 710, None),  # edge MCUs with a padding-only 8x8 luma block column and row
    ("demo", 1264, 720, None),  # 79 MCUs per row, a prime: whole-row intervals
    ("demo", 1920, 1080, None),
    ("demo", 1280, 720, 1),
    ("random", 1280, 720, 5),
]

# Number of bits per code length 1-16 of the four tables in ITU-T T.81 Annex K.3.
ANNEX_K_CODE_COUNTS = {
    0x00: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # luminance DC
    0x10: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],  # luminance AC
    0x01: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # chrominance DC
    0x11: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],  # chrominance AC
}


@cache
def frame_pair(content: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a read-only background and a second frame of the same size to take patches from."""
    if content == "demo":
        background = draw_frame(0, width=width, height=height)[0]
        other = draw_frame(40, width=width, height=height)[0]
    else:
        rng = np.random.default_rng(width * 10007 + height)
        background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        other = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    background.flags.writeable = False
    other.flags.writeable = False
    return background, other


def boxes_for(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Changed rectangles (x1, y1, x2, y2) at the places splicing can get wrong."""
    _, face_box = draw_frame(0, width=width, height=height)
    return {
        "face box": tuple(face_box),
        "unaligned inside": (331, 203, 505, 377),
        "on interval borders": (128, 48, 384, 176),
        "across MCU corners": (127, 15, 129, 17),
        "top-left corner": (0, 0, 50, 50),
        "bottom-right corner": (width - 60, height - 60, width, height),
        "last pixel": (width - 1, height - 1, width, height),
        "right edge": (width - 170, 100, width, 270),
        "bottom edge": (300, height - 170, 470, height),
        "whole frame": (0, 0, width, height),
    }


def composite(background: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    frame = background.copy()
    frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frame


def decode_pillow(data: bytes) -> np.ndarray:
    """Decode with Pillow, turning warnings into errors. Truncated data raises OSError."""
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = Image.open(io.BytesIO(data))
        image.load()
    assert image.format == "JPEG"
    return np.asarray(image)


def decode_opencv(data: bytes, capfd: pytest.CaptureFixture[str]) -> tuple[np.ndarray, str]:
    """Decode with OpenCV and return the image and what libjpeg wrote to stderr meanwhile."""
    capfd.readouterr()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image, capfd.readouterr().err


def frame_case_id(case: tuple) -> str:
    content, width, height, interval = case
    return f"{content}-{width}x{height}-R{interval or 'default'}"


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("case", FRAME_CASES, ids=frame_case_id)
def test_splice_equals_full_encode(case, quality):
    content, width, height, interval = case
    background, other = frame_pair(content, width, height)
    spliced = SplicedBackground.build(background, quality, interval)
    assert spliced.spliceable, spliced.fallback_reason

    for name, (x1, y1, x2, y2) in boxes_for(width, height).items():
        patch = other[y1:y2, x1:x2]
        frame = composite(background, patch, x1, y1)
        full = encode_baseline_jpeg(frame, quality, spliced.restart_interval)

        assert spliced.encode_patch(patch, x1, y1) == full, name
        assert spliced.encode_frame(frame, (x1, y1, x2, y2)) == full, name


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("case", FRAME_CASES[:6], ids=frame_case_id)
def test_spliced_jpeg_decodes_cleanly(case, quality, capfd):
    content, width, height, interval = case
    background, other = frame_pair(content, width, height)
    spliced = SplicedBackground.build(background, quality, interval)

    for name, (x1, y1, x2, y2) in boxes_for(width, height).items():
        patch = other[y1:y2, x1:x2]
        data = spliced.encode_patch(patch, x1, y1)
        without_restarts = encode_baseline_jpeg(composite(background, patch, x1, y1), quality)

        pillow_pixels = decode_pillow(data)
        assert pillow_pixels.shape == (height, width, 3), name
        assert np.array_equal(pillow_pixels, decode_pillow(without_restarts)), name

        opencv_pixels, libjpeg_messages = decode_opencv(data, capfd)
        assert libjpeg_messages == "", name
        assert np.array_equal(opencv_pixels, decode_opencv(without_restarts, capfd)[0]), name


def splice_keeping_region_markers(
    spliced: SplicedBackground, frame: np.ndarray, box: tuple[int, int, int, int]
) -> bytes:
    """Splice like SplicedBackground does, but keep the region's own RST numbering."""
    background = parse_scan_layout(spliced.background_jpeg)
    x1, y1, x2, y2 = spliced.region_for(box)
    region = parse_scan_layout(
        encode_baseline_jpeg(frame[y1:y2, x1:x2], spliced.quality, spliced.restart_interval)
    )
    columns, _ = mcu_counts(spliced.width, spliced.height)
    step = 16 * spliced.restart_interval
    per_row, wide = columns // spliced.restart_interval, -(-(x2 - x1) // step)

    pieces = [background.header]
    position = 0
    for row in range(-(-(y2 - y1) // 16)):
        first = (y1 // 16 + row) * per_row + x1 // step
        pieces.append(background.scan[position : background.starts[first]])
        source = row * wide
        if source + wide < region.interval_count:
            pieces.append(region.scan[region.starts[source] : region.starts[source + wide]])
        else:
            pieces.append(region.scan[region.starts[source] :])
            pieces.append(restart_marker(region.interval_count - 1))
        position = background.starts[first + wide]
    pieces += [background.scan[position:], EOI]
    return b"".join(pieces)


def test_splice_without_renumbering_is_corrupt(capfd):
    background, other = frame_pair("demo", 1280, 720)
    spliced = SplicedBackground.build(background, 75, 8)
    box = (555, 310, 729, 484)
    frame = composite(background, other[310:484, 555:729], 555, 310)
    region_x1, region_y1, _, _ = spliced.region_for(box)
    first_interval = region_y1 // 16 * 10 + region_x1 // 128
    assert first_interval % 8 != 0  # otherwise the region's numbering would happen to match

    correct = spliced.encode_frame(frame, box)
    corrupt = splice_keeping_region_markers(spliced, frame, box)
    assert len(corrupt) == len(correct)
    assert corrupt != correct

    correct_pixels, _ = decode_opencv(correct, capfd)
    corrupt_pixels, libjpeg_messages = decode_opencv(corrupt, capfd)
    assert "Corrupt JPEG data" in libjpeg_messages
    assert not np.array_equal(corrupt_pixels, correct_pixels)
    # Pillow's libjpeg glue does not report the warning, but its pixels show the damage.
    assert not np.array_equal(decode_pillow(corrupt), decode_pillow(correct))


def test_encoder_uses_annex_k_huffman_tables():
    background, other = frame_pair("random", 1280, 720)
    layouts = [
        parse_scan_layout(encode_baseline_jpeg(image, 75, 8))
        for image in (background, draw_frame(0)[0])
    ]

    # Optimised tables would differ between noise and a drawn frame.
    assert layouts[0].tables == layouts[1].tables
    tables = layouts[0].tables
    counts = {}
    position = tables.find(b"\xff\xc4")
    while position >= 0:
        length = int.from_bytes(tables[position + 2 : position + 4], "big")
        body = tables[position + 4 : position + 2 + length]
        counts[body[0]] = list(body[1:17])
        position = tables.find(b"\xff\xc4", position + 2 + length)
    assert counts == ANNEX_K_CODE_COUNTS


def test_background_interval_count():
    background, _ = frame_pair("demo", 1278, 718)
    spliced = SplicedBackground.build(background, 75, 8)
    layout = parse_scan_layout(spliced.background_jpeg)
    assert (layout.width, layout.height) == (1278, 718)
    assert layout.restart_interval == 8
    assert layout.interval_count == 80 * 45 // 8
    assert spliced.background_jpeg == encode_baseline_jpeg(background, 75, 8)


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (1280, 8),  # 80 MCUs
        (1920, 8),  # 120 MCUs
        (1278, 8),  # 80 MCUs, the last partial
        (1200, 5),  # 75 MCUs
        (1264, 79),  # 79 MCUs, a prime: whole rows
        (1296, 81),  # 81 MCUs: the largest divisor up to 8 is 3, so whole rows
        (100, 7),  # 7 MCUs
    ],
)
def test_choose_restart_interval(width, expected):
    assert choose_restart_interval(width) == expected


def test_empty_box_returns_background_jpeg():
    background, _ = frame_pair("demo", 1280, 720)
    spliced = SplicedBackground.build(background, 75)
    assert spliced.encode_frame(background, (100, 100, 100, 200)) == spliced.background_jpeg
    assert spliced.background_jpeg == encode_baseline_jpeg(background, 75, 8)


def test_fallback_when_interval_does_not_divide_row(caplog, monkeypatch):
    monkeypatch.setattr(jpeg_splice, "_reported_fallbacks", set())
    background, other = frame_pair("demo", 1280, 720)
    caplog.set_level(logging.WARNING, logger=jpeg_splice.logger.name)
    spliced = SplicedBackground.build(background, 60, 3)
    again = SplicedBackground.build(background, 60, 3)

    assert not spliced.spliceable
    assert not again.spliceable
    assert "does not divide the 80 MCUs per row" in spliced.fallback_reason
    assert len(caplog.records) == 1
    assert spliced.region_for((600, 300, 700, 400)) == (0, 0, 1280, 720)

    patch = other[300:400, 600:700]
    frame = composite(background, patch, 600, 300)
    expected = encode_baseline_jpeg(frame, 60)
    assert spliced.encode_patch(patch, 600, 300) == expected
    assert spliced.encode_frame(frame, (600, 300, 700, 400)) == expected
    assert spliced.background_jpeg == encode_baseline_jpeg(background, 60)


def test_fallback_when_encoder_optimises_tables(monkeypatch):
    def encode_optimised(image, quality, restart_interval=0):
        params = [
            cv2.IMWRITE_JPEG_QUALITY,
            quality,
            cv2.IMWRITE_JPEG_OPTIMIZE,
            1,
            cv2.IMWRITE_JPEG_RST_INTERVAL,
            restart_interval,
        ]
        return cv2.imencode(".jpg", image, params)[1].tobytes()

    monkeypatch.setattr(jpeg_splice, "encode_baseline_jpeg", encode_optimised)
    background, _ = frame_pair("demo", 1280, 720)
    spliced = SplicedBackground.build(background, 75, 8)
    assert not spliced.spliceable
    assert "different DQT, DHT or SOS" in spliced.fallback_reason


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (cv2.IMWRITE_JPEG_PROGRESSIVE, 1, "not baseline"),
        (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:0"),
    ],
)
def test_parse_rejects_other_jpeg_layouts(option, value, message):
    background, _ = frame_pair("demo", 1280, 720)
    data = cv2.imencode(".jpg", background, [option, value])[1].tobytes()
    with pytest.raises(JpegLayoutError, match=message):
        parse_scan_layout(data)


def test_parse_rejects_truncated_and_misnumbered_data():
    background, _ = frame_pair("demo", 1280, 720)
    data = encode_baseline_jpeg(background, 75, 8)
    with pytest.raises(JpegLayoutError, match="EOI"):
        parse_scan_layout(data[:-100])

    layout = parse_scan_layout(data)
    second_marker = len(layout.header) + layout.ends[1]
    misnumbered = data[: second_marker + 1] + b"\xd5" + data[second_marker + 2 :]
    with pytest.raises(JpegLayoutError, match="restart marker 1 is RST5, expected RST1"):
        parse_scan_layout(misnumbered)


def test_bad_input_raises_invalid_argument():
    background, other = frame_pair("demo", 1280, 720)
    spliced = SplicedBackground.build(background, 75)

    with pytest.raises(InvalidArgument, match="jpeg_quality 101 is out of range"):
        SplicedBackground.build(background, 101)
    with pytest.raises(InvalidArgument, match="restart_interval 0 is out of range"):
        SplicedBackground.build(background, 75, 0)
    with pytest.raises(InvalidArgument, match="background has dtype float32"):
        SplicedBackground.build(background.astype(np.float32), 75)
    with pytest.raises(InvalidArgument, match=r"background has shape \(720, 1280\)"):
        SplicedBackground.build(background[:, :, 0], 75)
    with pytest.raises(InvalidArgument, match=r"box \(1200, 0, 1290, 50\) is outside"):
        spliced.encode_frame(background, (1200, 0, 1290, 50))
    with pytest.raises(InvalidArgument, match=r"box \(-1, 0, 99, 100\) is outside"):
        spliced.encode_patch(other[:100, :100], -1, 0)
    with pytest.raises(InvalidArgument, match=r"frame has shape \(718, 1278, 3\)"):
        spliced.encode_frame(frame_pair("demo", 1278, 718)[0], (0, 0, 10, 10))
