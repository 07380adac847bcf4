"""WAV reading (formats and chunk layouts) and MP4 writing."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest

from lipsync.media import PCM_F32LE, PCM_S16LE, Mp4Writer, WavError, read_wav


def wav_bytes(
    payload: bytes, *, tag: int, channels: int, rate: int, bits: int, extra_chunks: bytes = b""
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_reads_16_bit_pcm_as_is(tmp_path):
    samples = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2")
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(samples.tobytes(), tag=1, channels=1, rate=16000, bits=16))
    audio = read_wav(path)
    assert (audio.encoding, audio.sample_rate, audio.channels) == (PCM_S16LE, 16000, 1)
    assert audio.data == samples.tobytes()


def test_reads_float_stereo_after_extra_chunks(tmp_path):
    samples = np.array([[0.5, -0.5], [0.25, 0.0], [1.0, -1.0]], dtype="<f4")
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size, padded
    path = tmp_path / "b.wav"
    path.write_bytes(
        wav_bytes(samples.tobytes(), tag=3, channels=2, rate=44100, bits=32, extra_chunks=extra)
    )
    audio = read_wav(path)
    assert (audio.encoding, audio.sample_rate, audio.channels) == (PCM_F32LE, 44100, 2)
    np.testing.assert_array_equal(audio.to_float(), samples)
    assert audio.frames == 3


def test_reads_24_bit_pcm_as_float(tmp_path):
    values = [0, 4194304, -4194304, 8388607]
    payload = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    path = tmp_path / "c.wav"
    path.write_bytes(wav_bytes(payload, tag=1, channels=1, rate=48000, bits=24))
    audio = read_wav(path)
    assert audio.encoding == PCM_F32LE
    np.testing.assert_allclose(audio.to_float()[:, 0], np.array(values) / 8388608.0, atol=1e-7)


def test_rejects_non_wav_and_unsupported_formats(tmp_path):
    path = tmp_path / "d.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(WavError, match="RIFF"):
        read_wav(path)
    path.write_bytes(wav_bytes(b"\x00" * 8, tag=1, channels=1, rate=16000, bits=8))
    with pytest.raises(WavError, match="8-bit"):
        read_wav(path)
    path.write_bytes(wav_bytes(b"\x00" * 12, tag=1, channels=3, rate=16000, bits=16))
    with pytest.raises(WavError, match="3 channels"):
        read_wav(path)


def test_mp4_has_every_frame_and_the_audio(tmp_path):
    samples = (np.sin(np.arange(24000) / 16000 * 2 * np.pi * 440) * 8000).astype("<i2")
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(samples.tobytes(), tag=1, channels=1, rate=16000, bits=16))
    audio = read_wav(path)

    out = tmp_path / "out.mp4"
    writer = Mp4Writer(out, width=640, height=360, audio=audio)
    for i in range(37):
        writer.add_frame(np.full((360, 640, 3), i * 6, dtype=np.uint8))
    writer.close()

    with av.open(str(out)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert sound.codec_context.name == "aac"
        assert abs(float(sound.duration * sound.time_base) - 1.5) < 0.05
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 37
    assert abs(float(frames[20].mean()) - 120) < 3
