"""The audio front end of a stream: PCM bytes in any chunking -> 16 kHz samples -> mel rows.

Each stage keeps the state that crosses chunk boundaries, so the mel rows of a stream equal
the rows of `decode_pcm` followed by `melspectrogram` on the whole audio, bit for bit:

* `PcmChunkDecoder` keeps the bytes of a sample or stereo frame that a chunk split.
* `StreamResampler` runs soxr's streaming resampler, whose output equals the one-shot
  ``soxr.resample`` that `decode_pcm` uses (checked with soxr 1.1 for 8-48 kHz, chunks of 1 to
  3000 samples), and cuts or pads the end to the same length.
* `MelStream` keeps the last input sample (the pre-emphasis carry), the samples that later STFT
  frames still overlap, and the mel rows that later windows still read.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

from inference_service.audio import (
    _S16_SCALE,
    _SAMPLE_DTYPES,
    TARGET_SAMPLE_RATE,
    AudioEncoding,
    _validate_layout,
)
from inference_service.mel import HOP_LENGTH, N_FFT, N_MELS, PREEMPHASIS, mel_rows, melspectrogram
from lipsync.errors import InvalidArgument

# A centred STFT frame t covers samples [t * hop - n_fft / 2, t * hop + n_fft / 2).
_HALF_FRAME = N_FFT // 2

# Reflect padding mirrors the samples after the edge sample, so it needs n_fft / 2 + 1 of them.
_REFLECT_MIN_SAMPLES = _HALF_FRAME + 1


class PcmChunkDecoder:
    """Decode PCM chunks to float32 mono samples at the input rate, as `decode_pcm` does.

    A chunk may end inside a sample or a stereo frame; the leftover bytes wait for the next
    chunk.
    """

    def __init__(self, encoding: AudioEncoding, sample_rate: int, channels: int) -> None:
        self.encoding = _validate_layout(encoding, sample_rate, channels)
        self.sample_rate = sample_rate
        self.channels = channels
        self.sample_dtype = _SAMPLE_DTYPES[self.encoding]
        self.frame_bytes = self.sample_dtype.itemsize * channels
        self.frames_decoded = 0
        self._remainder = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete sample or stereo frame waiting for the next chunk."""
        return len(self._remainder)

    def decode(self, data: bytes) -> np.ndarray:
        """Return the samples that `data` completes, float32 [n] mono.

        Raises
        ------
        InvalidArgument
            If a float32 sample is NaN or infinite.
        """
        buffer = self._remainder + bytes(data) if self._remainder else bytes(data)
        whole = len(buffer) - len(buffer) % self.frame_bytes
        self._remainder = buffer[whole:]
        if whole == 0:
            return np.zeros(0, dtype=np.float32)

        count = whole // self.sample_dtype.itemsize
        samples = np.frombuffer(buffer, dtype=self.sample_dtype, count=count)
        if self.sample_dtype.kind == "i":
            samples = samples.astype(np.float32) * _S16_SCALE
        else:
            samples = samples.astype(np.float32)
            self._check_finite(samples)

        if self.channels == 2:
            # The expression of decode_pcm, so the downmix rounds the same way.
            samples = 0.5 * samples[0::2] + 0.5 * samples[1::2]
        self.frames_decoded += samples.size
        return samples

    def _check_finite(self, samples: np.ndarray) -> None:
        not_finite = ~np.isfinite(samples)
        if not_finite.any():
            first = self.frames_decoded * self.channels + int(np.argmax(not_finite))
            raise InvalidArgument(
                f"audio chunk contains {int(np.count_nonzero(not_finite))} NaN or Inf samples, "
                f"the first at sample index {first} of the stream. Send finite float samples."
            )

    def check_complete(self) -> None:
        """Raise InvalidArgument if the stream ended inside a sample or a stereo frame."""
        if self._remainder:
            unit = "stereo frame" if self.channels == 2 else "sample"
            raise InvalidArgument(
                f"the stream's audio ended with {len(self._remainder)} bytes that do not form a "
                f"whole {self.frame_bytes}-byte {unit} of {self.encoding.name}. Send whole "
                f"{unit}s."
            )

    def reset(self) -> None:
        """Drop the bytes of an incomplete sample or frame."""
        self._remainder = b""


class StreamResampler:
    """Resample a mono float32 stream to 16 kHz, ending with the length `decode_pcm` gives.

    soxr delays its output by its filter length, so `process` returns fewer samples than it
    takes until `flush` returns the rest. Like `inference_service.audio.resample`, the total is
    cut or zero-padded to ``ceil(m * 16000 / sample_rate)`` samples for ``m`` input samples.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._stream: soxr.ResampleStream | None = None
        self.samples_in = 0
        self.samples_out = 0
        self._pending_output = np.zeros(0, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new signal: forget the samples inside the filter and the counts."""
        if self.sample_rate != TARGET_SAMPLE_RATE:
            self._stream = soxr.ResampleStream(
                self.sample_rate, TARGET_SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )
        self.samples_in = 0
        self.samples_out = 0
        self._pending_output = np.zeros(0, dtype=np.float32)

    def _length(self, samples_in: int) -> int:
        # The expression of inference_service.audio.resample.
        return math.ceil(samples_in * (float(TARGET_SAMPLE_RATE) / self.sample_rate))

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next input samples and return the 16 kHz samples that are final."""
        self.samples_in += samples.size
        if self._stream is None:
            self.samples_out += samples.size
            return samples

        output = self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.float32))
        if self._pending_output.size:
            output = np.concatenate([self._pending_output, output])

        _check_resampled(output, self.sample_rate)

        # Samples past the length of the audio so far could be cut at the end, so they wait.
        released = max(0, min(output.size, self._length(self.samples_in) - self.samples_out))
        self._pending_output = output[released:]
        self.samples_out += released
        return output[:released]

    def flush(self) -> np.ndarray:
        """Return the remaining samples, so the total has the one-shot length."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)

        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        _check_resampled(tail, self.sample_rate)
        remaining = np.concatenate([self._pending_output, tail])
        self._pending_output = np.zeros(0, dtype=np.float32)
        count = self._length(self.samples_in) - self.samples_out
        if remaining.size < count:
            remaining = np.concatenate(
                [remaining, np.zeros(count - remaining.size, dtype=np.float32)]
            )
        self.samples_out += count
        return remaining[:count]


def _check_resampled(samples: np.ndarray, sample_rate: int) -> None:
    # Finite float32 samples near the float32 maximum overflow in soxr's filter; decode_pcm
    # rejects such audio in the same words.
    n_not_finite = int(np.count_nonzero(~np.isfinite(samples)))
    if n_not_finite:
        raise InvalidArgument(
            f"the stream's audio contains samples too large to resample from {sample_rate} Hz "
            f"to {TARGET_SAMPLE_RATE} Hz: {n_not_finite} resampled samples overflow float32. "
            "Send float samples in [-1, 1]."
        )


def rows_final_at(n_samples: int, pad_mode: str) -> int:
    """Return how many mel rows the first `n_samples` samples fix, whatever follows them.

    Row t reads the pre-emphasized samples up to ``t * 200 + 400`` (exclusive). Reflect padding
    also mirrors samples 1-400 into the rows at the start, so it needs 401 samples first.
    """
    if pad_mode == "reflect" and n_samples < _REFLECT_MIN_SAMPLES:
        return 0
    if n_samples < _HALF_FRAME:
        return 0
    return (n_samples - _HALF_FRAME) // HOP_LENGTH + 1


class MelStream:
    """Mel rows of a growing 16 kHz signal, equal to `melspectrogram` rows of the whole signal.

    Rows are computed as soon as no later sample can change them. `finish` adds the end padding
    and the last rows. `truncate` rewinds the signal (for an interrupt). `release` drops the
    samples and rows that no later call can need, so memory stays bounded on long streams.

    Parameters
    ----------
    pad_mode : {"constant", "reflect"}
        STFT padding, as in `melspectrogram`.
    """

    def __init__(self, pad_mode: str) -> None:
        self.pad_mode = pad_mode
        self.n_samples = 0
        self.n_rows = 0
        self.finished = False
        self._raw = np.zeros(0, dtype=np.float32)  # samples [raw_start, n_samples)
        self._raw_start = 0
        self._rows = np.zeros((0, N_MELS), dtype=np.float32)  # rows [rows_start, n_rows)
        self._rows_start = 0

    def append(self, samples: np.ndarray) -> int:
        """Append 16 kHz float32 samples and return the number of new final rows."""
        if self.finished:
            raise RuntimeError("append after finish")
        if samples.size == 0:
            return 0
        self._raw = np.concatenate([self._raw, samples.astype(np.float32, copy=False)])
        self.n_samples += samples.size
        return self._compute_rows(rows_final_at(self.n_samples, self.pad_mode))

    def finish(self) -> int:
        """End the signal: compute the rows that read the end padding; return the row count."""
        if self.finished:
            return self.n_rows
        self.finished = True
        if self.pad_mode == "reflect" and 0 < self.n_samples < _REFLECT_MIN_SAMPLES:
            # np.pad reflects a signal shorter than the padding several times over; the
            # one-shot function does that. No row was computed yet, so every sample is held.
            self._rows = melspectrogram(self._raw, pad_mode="reflect")
            self.n_rows = len(self._rows)
        elif self.n_samples > 0:
            self._compute_rows(1 + self.n_samples // HOP_LENGTH)
        return self.n_rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Return rows [start, stop), float32 [stop - start, 80] (a view: do not modify)."""
        if start < self._rows_start or stop > self.n_rows:
            raise IndexError(
                f"mel rows [{start}, {stop}) requested, rows [{self._rows_start}, "
                f"{self.n_rows}) are held"
            )
        return self._rows[start - self._rows_start : stop - self._rows_start]

    def truncate(self, n_samples: int) -> None:
        """Cut the signal to its first `n_samples` samples and drop the rows that read past it."""
        if self.finished:
            raise RuntimeError("truncate after finish")
        if not self._raw_start <= n_samples <= self.n_samples:
            raise ValueError(
                f"cannot truncate to sample {n_samples}: samples [{self._raw_start}, "
                f"{self.n_samples}) are held"
            )
        self._raw = self._raw[: n_samples - self._raw_start]
        self.n_samples = n_samples
        keep = min(self.n_rows, rows_final_at(n_samples, self.pad_mode))
        if keep < self._rows_start:
            raise ValueError(f"cannot truncate to sample {n_samples}: its rows were released")
        self._rows = self._rows[: keep - self._rows_start]
        self.n_rows = keep

    def release(self, *, keep_rows_from: int, keep_samples_from: int) -> None:
        """Forget rows before `keep_rows_from` and what no row from `keep_samples_from` on needs.

        `keep_samples_from` is the earliest sample a later `truncate` may cut at.
        """
        rows_from = max(self._rows_start, min(keep_rows_from, self.n_rows))
        if rows_from > self._rows_start:
            self._rows = self._rows[rows_from - self._rows_start :].copy()
            self._rows_start = rows_from

        # Later rows, and the rows recomputed after a truncate at keep_samples_from or later,
        # start at the first row that is not final at keep_samples_from. Their frames reach
        # 400 samples back, plus one sample for the pre-emphasis carry. The reflected end
        # padding reads the last 401 samples, which lie after that.
        first_open_row = min(self.n_rows, rows_final_at(keep_samples_from, self.pad_mode))
        samples_from = first_open_row * HOP_LENGTH - _HALF_FRAME - 1
        if self.pad_mode == "reflect" and first_open_row < 2:
            samples_from = 0  # rows 0 and 1 mirror samples 1-400
        if samples_from > self._raw_start:
            self._raw = self._raw[samples_from - self._raw_start :].copy()
            self._raw_start = samples_from

    def _compute_rows(self, stop: int) -> int:
        start = self.n_rows
        if stop <= start:
            return 0
        padded = self._padded_segment(
            start * HOP_LENGTH - _HALF_FRAME, (stop - 1) * HOP_LENGTH + _HALF_FRAME
        )
        self._rows = np.concatenate([self._rows, mel_rows(padded, start)])
        self.n_rows = stop
        return stop - start

    def _padded_segment(self, first: int, stop: int) -> np.ndarray:
        # Pre-emphasized samples [first, stop) in signal indices, with the padding of
        # melspectrogram for indices before 0 and (after finish) from n_samples on.
        indices = np.arange(first, stop)
        if self.pad_mode == "reflect":
            indices = np.where(indices < 0, -indices, indices)
            if self.finished:
                last = self.n_samples - 1
                indices = np.where(indices > last, 2 * last - indices, indices)
        inside = (indices >= 0) & (indices < self.n_samples)

        segment = np.zeros(stop - first, dtype=np.float64)
        if inside.any():
            low, high = int(indices[inside].min()), int(indices[inside].max()) + 1
            segment[inside] = self._emphasize(low, high)[indices[inside] - low]
        return segment

    def _emphasize(self, start: int, stop: int) -> np.ndarray:
        # y[n] - k * y[n - 1] in float64 with y[-1] = 0: the operations of melspectrogram.
        first_needed = max(start - 1, 0)
        if first_needed < self._raw_start:
            raise IndexError(
                f"sample {first_needed} was released (samples from {self._raw_start} are held)"
            )
        samples = self._raw[first_needed - self._raw_start : stop - self._raw_start]
        samples = samples.astype(np.float64)
        if start > 0:
            return samples[1:] - PREEMPHASIS * samples[:-1]

        emphasized = np.empty(samples.size, dtype=np.float64)
        emphasized[0] = samples[0]
        np.subtract(samples[1:], PREEMPHASIS * samples[:-1], out=emphasized[1:])
        return emphasized
