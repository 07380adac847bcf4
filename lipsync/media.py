"""WAV reading and MP4 writing for the command-line tools."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

# Values of the public API's AudioEncoding enum.
PCM_S16LE = 1
PCM_F32LE = 2


class WavError(ValueError):
    """A WAV file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class WavAudio:
    """Audio ready to send: little-endian PCM bytes and their declared layout."""

    data: bytes
    encoding: int  # PCM_S16LE or PCM_F32LE
    sample_rate: int
    channels: int

    @property
    def frames(self) -> int:
        sample_bytes = 2 if self.encoding == PCM_S16LE else 4
        return len(self.data) // (sample_bytes * self.channels)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def to_float(self) -> np.ndarray:
        """Return the samples as float32 [frames, channels] in [-1, 1]."""
        if self.encoding == PCM_S16LE:
            samples = np.frombuffer(self.data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(self.data, dtype="<f4").astype(np.float32)
        return samples.reshape(-1, self.channels)


def read_wav(path: Path) -> WavAudio:
    """Read a RIFF WAV file: 16-bit PCM, 24/32-bit PCM or 32-bit float, any chunk layout.

    16-bit PCM is passed through; 24- and 32-bit integer PCM are converted to float32.
    """
    raw = Path(path).read_bytes()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise WavError(f"{path} is not a RIFF/WAVE file")

    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id, size = struct.unpack_from("<4sI", raw, offset)
        body = raw[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WavError(f"{path}: fmt chunk of {len(body)} bytes is too short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            data = body
        offset += 8 + size + (size & 1)  # chunks are padded to an even size

    if fmt is None or data is None:
        raise WavError(f"{path}: missing {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, bits = fmt
    if channels not in (1, 2):
        raise WavError(f"{path} has {channels} channels; use mono or stereo")

    frame_bytes = channels * bits // 8
    data = data[: len(data) - len(data) % frame_bytes] if frame_bytes else data
    if tag == WAVE_FORMAT_PCM and bits == 16:
        return WavAudio(data, PCM_S16LE, rate, channels)
    if tag == WAVE_FORMAT_IEEE_FLOAT and bits == 32:
        return WavAudio(data, PCM_F32LE, rate, channels)
    if tag == WAVE_FORMAT_PCM and bits == 24:
        triples = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)) << 8 >> 8
        return WavAudio((values / 8388608.0).astype("<f4").tobytes(), PCM_F32LE, rate, channels)
    if tag == WAVE_FORMAT_PCM and bits == 32:
        values = np.frombuffer(data, dtype="<i4") / 2147483648.0
        return WavAudio(values.astype("<f4").tobytes(), PCM_F32LE, rate, channels)
    raise WavError(
        f"{path}: format tag {tag} with {bits}-bit samples is not supported; use 16-bit PCM or "
        "32-bit float"
    )


class Mp4Writer:
    """Write BGR frames as H.264 video (yuv420p) with an optional AAC audio track."""

    def __init__(
        self, path: Path, *, width: int, height: int, fps: int = 25, audio: WavAudio | None = None
    ) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w")
        self.video = self.container.add_stream("libx264", rate=fps)
        self.video.width = width
        self.video.height = height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": "20", "preset": "veryfast"}
        self.audio = audio
        self.audio_stream = None
        if audio is not None:
            # Every stream must exist before the first packet is muxed.
            self.audio_stream = self.container.add_stream("aac", rate=audio.sample_rate)
            self.audio_stream.layout = "mono" if audio.channels == 1 else "stereo"
        self.frames = 0

    def add_frame(self, bgr: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def _write_audio(self) -> None:
        import av

        audio, stream = self.audio, self.audio_stream
        planar = np.ascontiguousarray(audio.to_float().T)
        chunk = 1024
        for start in range(0, planar.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + chunk]),
                format="fltp",
                layout=stream.layout.name,
            )
            frame.sample_rate = audio.sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, audio.sample_rate)
            for packet in stream.encode(frame):
                self.container.mux(packet)
        for packet in stream.encode(None):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoders, write the audio track and finish the file."""
        for packet in self.video.encode(None):
            self.container.mux(packet)
        if self.audio_stream is not None:
            self._write_audio()
        self.container.close()
