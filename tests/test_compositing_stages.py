"""Face input, ping-pong order and compositing, each against the reference steps done plainly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from compositing_service.compositor import composite_frame, encode_frame
from inference_service.core import build_face_batch, mouths_from_output
from lipsync.avatar.geometry import crop_face, face_from_crop
from lipsync.avatar.spec import background_index


def reference_pingpong(frame_count: int, length: int) -> list[int]:
    forward = list(range(frame_count))
    cycle = forward + forward[-2:0:-1] if frame_count > 1 else [0]
    return [cycle[i % len(cycle)] for i in range(length)]


@pytest.mark.parametrize("frame_count", [1, 2, 3, 5, 125])
def test_pingpong_order(frame_count):
    expected = reference_pingpong(frame_count, 600)
    assert [background_index(i, frame_count) for i in range(600)] == expected


def test_pingpong_start_offset_continues_the_loop():
    expected = reference_pingpong(4, 50)
    assert [background_index(7 + i, 4) for i in range(20)] == expected[7:27]


def test_pingpong_visits_ends_once():
    order = [background_index(i, 5) for i in range(9)]
    assert order == [0, 1, 2, 3, 4, 3, 2, 1, 0]


@pytest.fixture
def frame_and_box():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, size=(720, 1280, 3), dtype=np.uint8)
    return frame, (500, 300, 731, 531)


def test_face_input_matches_reference_steps(frame_and_box):
    frame, (x1, y1, x2, y2) = frame_and_box

    # The reference: crop, INTER_CUBIC to 328, centre 320, rectangle (5, 5, 310, 305) blacked
    # out with cv2.rectangle, both /255 in float32, channels first, real face then masked.
    crop = cv2.resize(frame[y1:y2, x1:x2], (328, 328), interpolation=cv2.INTER_CUBIC)
    real = crop[4:324, 4:324].copy()
    masked = cv2.rectangle(real.copy(), (5, 5, 310, 305), (0, 0, 0), -1)
    expected = np.concatenate(
        [
            real.transpose(2, 0, 1).astype(np.float32) / 255.0,
            masked.transpose(2, 0, 1).astype(np.float32) / 255.0,
        ]
    )[None]

    face = face_from_crop(crop_face(frame, (x1, y1, x2, y2)))
    got = build_face_batch(face[None], "bgr")
    assert got.dtype == np.float32
    assert got.shape == (1, 6, 320, 320)
    np.testing.assert_array_equal(got, expected)


def test_face_input_mask_covers_rows_5_to_309_and_cols_5_to_314():
    faces = np.full((1, 320, 320, 3), 255, dtype=np.uint8)
    masked = build_face_batch(faces, "bgr")[0, 3]
    zero_rows, zero_cols = np.nonzero(masked == 0)
    assert (zero_rows.min(), zero_rows.max()) == (5, 309)
    assert (zero_cols.min(), zero_cols.max()) == (5, 314)
    assert np.count_nonzero(masked == 0) == 305 * 310


def test_face_input_rgb_order_swaps_channels():
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, size=(2, 320, 320, 3), dtype=np.uint8)
    bgr = build_face_batch(faces, "bgr")
    rgb = build_face_batch(faces, "rgb")
    np.testing.assert_array_equal(rgb[:, :3], bgr[:, 2::-1])
    np.testing.assert_array_equal(rgb[:, 3:], bgr[:, 5:2:-1])


def test_mouth_output_truncates_like_uint8_cast():
    rng = np.random.default_rng(3)
    pred = rng.random((2, 3, 320, 320), dtype=np.float32)
    pred[0, 0, 0, :4] = [0.0, 1.0, 0.999999, 0.5 / 255]
    expected = np.array(pred.transpose(0, 2, 3, 1) * 255, dtype=np.uint8)
    np.testing.assert_array_equal(mouths_from_output(pred, "bgr"), expected)
    np.testing.assert_array_equal(mouths_from_output(pred, "rgb"), expected[..., ::-1])


def test_composite_matches_reference_steps(frame_and_box):
    frame, (x1, y1, x2, y2) = frame_and_box
    rng = np.random.default_rng(11)
    mouth = rng.integers(0, 256, size=(320, 320, 3), dtype=np.uint8)
    crop = crop_face(frame, (x1, y1, x2, y2))

    expected = frame.copy()
    working = cv2.resize(frame[y1:y2, x1:x2], (328, 328), interpolation=cv2.INTER_CUBIC)
    working[4:324, 4:324] = mouth
    expected[y1:y2, x1:x2] = cv2.resize(working, (x2 - x1, y2 - y1), interpolation=cv2.INTER_CUBIC)

    got = composite_frame(frame, crop, np.array([x1, y1, x2, y2]), mouth)
    np.testing.assert_array_equal(got, expected)


def test_composite_changes_only_the_box(frame_and_box):
    frame, box = frame_and_box
    x1, y1, x2, y2 = box
    mouth = np.zeros((320, 320, 3), dtype=np.uint8)
    got = composite_frame(frame, crop_face(frame, box), np.array(box), mouth)

    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(got[outside], frame[outside])
    # The black mouth crop fills the box except the resized 4-pixel ring of the 328 crop.
    centre = got[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10]
    assert centre.max() == 0
    assert frame[y1:y2, x1:x2].mean() > 100


def test_encode_jpeg_and_png_decode_to_frame_size(frame_and_box):
    frame, _ = frame_and_box
    jpeg = encode_frame(frame, "jpeg", 75)
    png = encode_frame(frame, "png", 75)
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded_png = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded_png, frame)
    decoded_jpeg = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded_jpeg.shape == frame.shape


@pytest.fixture(scope="module")
def demo_avatar(demo_data):
    from compositing_service.avatars import load_compositing_avatar

    return load_compositing_avatar(demo_data.avatars_dir, "demo")


def test_spliced_jpeg_decodes_to_full_encode_pixels(demo_avatar):
    from compositing_service.compositor import Compositor

    rng = np.random.default_rng(21)
    mouths = rng.integers(0, 256, size=(6, 320, 320, 3), dtype=np.uint8)
    backgrounds = np.array([0, 1, 57, 124, 3, 3])
    spliced = Compositor(2, "splice")
    full = Compositor(2, "full")
    try:
        a = spliced.render(demo_avatar, backgrounds, mouths, output_format="jpeg", jpeg_quality=75)
        b = full.render(demo_avatar, backgrounds, mouths, output_format="jpeg", jpeg_quality=75)
    finally:
        spliced.close()
        full.close()
    for spliced_jpeg, full_jpeg in zip(a, b, strict=True):
        assert b"\xff\xdd" in spliced_jpeg  # DRI: the spliced frames carry restart markers
        assert b"\xff\xdd" not in full_jpeg
        np.testing.assert_array_equal(
            cv2.imdecode(np.frombuffer(spliced_jpeg, np.uint8), cv2.IMREAD_COLOR),
            cv2.imdecode(np.frombuffer(full_jpeg, np.uint8), cv2.IMREAD_COLOR),
        )
