"""Streaming sessions of the inference tier, free of gRPC: audio chunks in, mouth crops out.

A `StreamSession` renders the mouth crops of an utterance whose audio arrives in chunks of any
size. It keeps the audio state between chunks (see `inference_service.stream_audio`), the
encoded window features and the frame cursor, so no sample is processed twice, and it renders
each frame as soon as all audio the frame depends on has arrived. With the default look-ahead of
8 feature rows the crops equal those of `InferenceCore.render_mouths` on the whole audio, byte
for byte, however the audio is chunked.

Which audio a frame depends on follows from the contract of the audio path. Frame i takes the
padded feature rows [i - 8, i + 8), and padded row j is window j - 1. Window k takes the mel
rows [int(80 * k / 25), + 16), and mel row t is centred on sample 200 t with n_fft 800. So
frame i needs the 16 kHz samples before `required_samples(i)`, about 450 ms past its
presentation time (i x 40 ms). With fewer look-ahead rows, the missing future rows are zero
rows. Each row fewer waits 40 ms less, and the frames then differ from the whole-utterance
render.

In paced (live) mode the session emits frame i at a fixed wall-clock time, start + i x 40 ms,
and fills an audio underrun with silence. The timeline, and so frame i's presentation time
i x 40 ms, includes the filled silence.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference_service.audio import TARGET_SAMPLE_RATE, AudioEncoding
from inference_service.avatars import InferenceAvatar
from inference_service.core import InferenceCore, MouthBatch, build_face_batch, mouths_from_output
from inference_service.features import (
    CONTEXT_ROWS,
    MEL_WINDOW_ROWS,
    MIN_SAMPLES,
    VIDEO_FPS,
    unclamped_window_start,
    window_count,
)
from inference_service.mel import HOP_LENGTH, N_FFT
from inference_service.models import AudioEncoder
from inference_service.stream_audio import (
    MelStream,
    PcmChunkDecoder,
    StreamResampler,
    rows_final_at,
)
from lipsync.avatar.spec import background_index
from lipsync.errors import InvalidArgument

logger = logging.getLogger(__name__)

SAMPLES_PER_FRAME = TARGET_SAMPLE_RATE // VIDEO_FPS
FRAME_SECONDS = 1.0 / VIDEO_FPS
MAX_LOOKAHEAD_ROWS = CONTEXT_ROWS // 2
_HALF_CONTEXT = CONTEXT_ROWS // 2

INTERRUPT_CLOSE_FRAMES = 10
"""After an interrupt at frame f, frame f + 10 is the first whose whole context is silence.

Window k starts at mel row int(3.2 k), whose frame reads pre-emphasized samples from about
640 k - 400 on. The first sample after the cut at 640 f still carries the pre-emphasis of the
last dropped one. Frame f + m reads windows from f + m - 9 on, and window f + 1 is the first to
start after sample 640 f + 1 for every f, so m = 10.
"""

PACED_MARGIN_S = 0.1
"""Paced mode: time from the arrival of frame 0's audio to frame 0's due time.

It covers network jitter and the UNet run. The value is an estimate for a CPU deployment on
loopback."""

PACED_RENDER_AHEAD = 4
"""Paced mode: frames rendered before they are due, so they leave on time."""


def required_samples(frame: int, lookahead_rows: int = MAX_LOOKAHEAD_ROWS) -> int:
    """Return how many 16 kHz samples of the stream frame `frame` depends on.

    The frame reads padded feature rows up to ``frame + lookahead_rows - 1``, the feature row
    of window ``frame + lookahead_rows - 2`` (window 0 at least, which also shows that the
    frame exists). That window's last mel row t is final once the samples before
    ``200 t + 400`` are there.
    """
    window = max(frame + lookahead_rows - 2, 0)
    last_row = unclamped_window_start(window) + MEL_WINDOW_ROWS - 1
    return HOP_LENGTH * last_row + N_FFT // 2


def lookahead_ms(lookahead_rows: int = MAX_LOOKAHEAD_ROWS) -> float:
    """Return the most audio past a frame's presentation time that the frame waits for, in ms.

    This is the steady-state maximum over the 5-frame cycle of ``int(3.2 k)``. The first frames
    of a stream with fewer than 2 look-ahead rows wait longer, for window 0 (212.5 ms).
    """
    worst = max(
        required_samples(frame, lookahead_rows) - frame * SAMPLES_PER_FRAME
        for frame in range(10, 15)
    )
    return 1000.0 * worst / TARGET_SAMPLE_RATE


def windows_final_at(n_rows: int) -> int:
    """Return how many windows lie within the first `n_rows` mel rows without the end clamp."""
    if n_rows < MEL_WINDOW_ROWS:
        return 0
    count = max(0, (n_rows - MEL_WINDOW_ROWS) * VIDEO_FPS // 80 - 1)
    while unclamped_window_start(count) + MEL_WINDOW_ROWS <= n_rows:
        count += 1
    return count


@dataclass
class StreamBatch(MouthBatch):
    """Consecutive mouth crops of a stream; `utterance_frames` is 0 until the stream ends."""

    silence_fill: np.ndarray  # bool [B]: paced streams only, the frame's 40 ms were filled in


class FeatureStream:
    """Audio-encoder features of a stream's mel windows, and the UNet context built from them.

    Padded feature row 0 is window 0, row j (1 <= j <= K) is window j - 1, row K + 1 is window
    K - 1, and rows outside [0, K + 2) are zero rows, as `pad_features` and `audio_context` do.
    """

    def __init__(self, encoder: AudioEncoder) -> None:
        self.encoder = encoder
        self.n_windows = 0
        self.total_windows: int | None = None
        self._features = np.zeros((0, 0), dtype=np.float32)  # windows [start, n_windows)
        self._start = 0

    def update(self, mel: MelStream) -> int:
        """Encode the windows that the final mel rows complete; return how many."""
        stop = max(self.n_windows, windows_final_at(mel.n_rows))
        starts = [unclamped_window_start(k) for k in range(self.n_windows, stop)]
        return self._encode(mel, starts)

    def finish(self, mel: MelStream) -> int:
        """Encode the last windows, clamped to end at the last mel row; return the total K."""
        try:
            total = window_count(mel.n_rows)
        except InvalidArgument:
            raise InvalidArgument(
                f"the stream's audio is too short: {mel.n_samples} samples at 16 kHz form "
                f"{mel.n_rows} mel rows, but the audio encoder needs at least "
                f"{MEL_WINDOW_ROWS}, which take {MIN_SAMPLES} samples "
                f"({1000 * MIN_SAMPLES / TARGET_SAMPLE_RATE:g} ms). Send more audio before "
                "ending the stream."
            ) from None
        last_start = mel.n_rows - MEL_WINDOW_ROWS
        starts = [min(unclamped_window_start(k), last_start) for k in range(self.n_windows, total)]
        self._encode(mel, starts)
        self.total_windows = total
        return total

    def _encode(self, mel: MelStream, starts: list[int]) -> int:
        if not starts:
            return 0
        windows = np.stack([mel.rows(s, s + MEL_WINDOW_ROWS).T for s in starts])
        features = self.encoder.encode(np.ascontiguousarray(windows[:, np.newaxis]))
        if self._features.size:
            features = np.concatenate([self._features, features])
        self._features = features
        self.n_windows += len(starts)
        return len(starts)

    def truncate(self, n_rows: int) -> None:
        """Drop the windows that read mel rows from `n_rows` on."""
        keep = min(self.n_windows, windows_final_at(n_rows))
        if keep < self._start:
            raise ValueError(f"cannot keep {keep} windows: windows before {self._start} released")
        self._features = self._features[: keep - self._start]
        self.n_windows = keep

    def release(self, keep_from: int) -> None:
        """Forget the features of windows before `keep_from`."""
        keep_from = min(keep_from, self.n_windows)
        if keep_from > self._start:
            self._features = self._features[keep_from - self._start :].copy()
            self._start = keep_from

    def context(
        self, frames: np.ndarray, lookahead_rows: int, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Gather the UNet's audio input of `frames`, float32 [B, *shape].

        Frame i takes padded rows [i - 8, i + lookahead_rows) and zero rows after them.
        """
        offsets = np.arange(-_HALF_CONTEXT, CONTEXT_ROWS - _HALF_CONTEXT)
        rows = frames[:, np.newaxis] + offsets
        valid = (rows >= 0) & (offsets < lookahead_rows)
        windows = np.maximum(rows - 1, 0)
        if self.total_windows is not None:
            valid &= rows < self.total_windows + 2
            windows = np.minimum(windows, self.total_windows - 1)

        dim = self._features.shape[1]
        context = np.zeros((len(frames), CONTEXT_ROWS, dim), dtype=np.float32)
        context[valid] = self._features[windows[valid] - self._start]
        return context.reshape(len(frames), *shape)


class StreamSession:
    """Per-stream state of the inference tier: audio in chunks, mouth crops as they are ready.

    Not thread-safe: one handler drives it.

    Parameters
    ----------
    core : InferenceCore
        Its audio encoder, batch size and registry statistics are used.
    avatar : InferenceAvatar
        Held by the caller for the whole stream (``core.avatars.acquire``).
    encoding, sample_rate, channels
        Layout of the audio chunks, as in a RenderMouths request (rate 8000-48000 Hz).
    start_frame : int >= 0
        Position in the background loop of frame 0.
    lookahead_rows : int, 0-8
        Future feature rows each frame waits for; 8 gives the crops of the whole-utterance
        render, fewer put zero rows in their place.
    paced : bool
        Live mode: frames are due at wall-clock times (`next_deadline`, `emit_due`) and an
        underrun is filled with silence.
    load_ms : float
        Milliseconds spent loading the avatar, reported with the first batch.
    clock : callable returning seconds
        Monotonic clock of the paced schedule; tests pass a fake one.
    paced_margin_s : float
        Paced mode: time between the arrival of frame 0's audio and frame 0's due time.
    max_ahead : int
        Paced mode: most frames rendered before they are due.
    """

    def __init__(
        self,
        core: InferenceCore,
        avatar: InferenceAvatar,
        *,
        encoding: AudioEncoding = AudioEncoding.PCM_F32LE,
        sample_rate: int = TARGET_SAMPLE_RATE,
        channels: int = 1,
        start_frame: int = 0,
        lookahead_rows: int = MAX_LOOKAHEAD_ROWS,
        paced: bool = False,
        load_ms: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        paced_margin_s: float = PACED_MARGIN_S,
        max_ahead: int = PACED_RENDER_AHEAD,
    ) -> None:
        if not 0 <= lookahead_rows <= MAX_LOOKAHEAD_ROWS:
            raise InvalidArgument(
                f"lookahead_rows {lookahead_rows} is out of range: use 0-{MAX_LOOKAHEAD_ROWS} "
                f"(unset means {MAX_LOOKAHEAD_ROWS}, the exact context)"
            )
        if start_frame < 0:
            raise InvalidArgument(f"start_frame_idx {start_frame} is negative: use 0 or more")
        self.decoder = PcmChunkDecoder(encoding, sample_rate, channels)
        self.resampler = StreamResampler(sample_rate)

        self.core = core
        self.avatar = avatar
        self.start_frame = start_frame
        self.lookahead_rows = lookahead_rows
        self.paced = paced
        self.clock = clock
        self.paced_margin_s = paced_margin_s
        self.max_ahead = max_ahead

        self.mel = MelStream(avatar.spec.mel_pad_mode)
        self.features = FeatureStream(core.audio_encoder)
        self.finished = False
        self.next_frame = 0  # the next frame to return
        self.samples_received = 0  # 16 kHz samples of client audio in the timeline
        self.samples_filled = 0  # 16 kHz samples of silence the session added to the timeline
        self.samples_dropped = 0  # 16 kHz samples cut from the timeline by interrupts
        self.interrupts = 0
        self.frames_filled = 0

        self._fills: list[tuple[int, int]] = []  # silence added to the timeline, [start, stop)
        self._ahead: list[tuple[int, int, np.ndarray]] = []  # paced: (frame, background, crop)
        self._ahead_ms = 0.0  # paced: UNet time of the frames rendered ahead, not yet reported
        self._audio_ms = 0.0
        self._load_ms = load_ms
        self._first_audio_at: float | None = None
        self._frame0_ready_at: float | None = None
        self._start_at: float | None = None

    # --- properties -----------------------------------------------------------------------

    @property
    def total_frames(self) -> int | None:
        """Frames of the utterance (K + 2), known once the stream ended."""
        total = self.features.total_windows
        return None if total is None else total + 2

    @property
    def done(self) -> bool:
        """Whether every frame of the ended utterance was returned."""
        return self.finished and self.next_frame >= (self.total_frames or 0)

    @property
    def timeline_samples(self) -> int:
        """16 kHz samples in the timeline: client audio and filled silence."""
        return self.mel.n_samples

    def ready_frames(self) -> int:
        """Return how many frames, from frame 0, the audio so far determines."""
        if self.finished:
            return self.total_frames or 0
        if self.features.n_windows == 0:
            return 0
        return max(0, self.features.n_windows + 2 - self.lookahead_rows)

    # --- audio in ---------------------------------------------------------------------------

    def push_audio(self, data: bytes) -> list[StreamBatch]:
        """Add a chunk of audio; return the frames it made ready (none in paced mode).

        Raises
        ------
        InvalidArgument
            If a float sample is NaN or infinite.
        """
        if self.finished:
            raise InvalidArgument("audio arrived after the end of the stream")
        if not data:
            return []
        if self._first_audio_at is None:
            self._first_audio_at = self.clock()

        started = time.perf_counter()
        samples = self.resampler.process(self.decoder.decode(data))
        self.samples_received += samples.size
        self._append(samples)
        self._audio_ms += (time.perf_counter() - started) * 1000
        return [] if self.paced else self._render_ready()

    def finish(self) -> list[StreamBatch]:
        """End the utterance: flush the last windows and return every remaining frame.

        In paced mode the remaining frames are returned by `emit_due` at their times instead.

        Raises
        ------
        InvalidArgument
            If the audio ended inside a sample, or is too short to form one mel window.
        """
        if self.finished:
            return []
        started = time.perf_counter()
        self.decoder.check_complete()
        tail = self.resampler.flush()
        self.samples_received += tail.size
        self.mel.append(tail)
        self.mel.finish()
        self.features.finish(self.mel)
        self.finished = True
        self._note_frame0_ready()
        self._audio_ms += (time.perf_counter() - started) * 1000
        return [] if self.paced else self._render_ready()

    def interrupt(self) -> list[StreamBatch]:
        """Barge-in: drop the audio not yet rendered and close the mouth.

        The timeline is cut at the next frame f to return (sample 640 f), and the audio state
        is rewound to that point. Frames rendered ahead are dropped. Silence is appended so
        that frames f to f + `INTERRUPT_CLOSE_FRAMES` can be rendered, and frame
        f + `INTERRUPT_CLOSE_FRAMES` and later frames of that silence read silence only. Audio
        sent after the interrupt follows the silence. Returns the frames now ready (none in
        paced mode, where they follow at their times).
        """
        if self.finished:
            return []
        started = time.perf_counter()
        cut = self.next_frame * SAMPLES_PER_FRAME
        dropped = self.mel.n_samples - cut
        filled_dropped = sum(max(0, stop - max(start, cut)) for start, stop in self._fills)
        self.samples_dropped += dropped - filled_dropped
        self.samples_received -= dropped - filled_dropped
        self.samples_filled -= filled_dropped
        self._fills = [(start, min(stop, cut)) for start, stop in self._fills if start < cut]

        self.decoder.reset()
        self.resampler.reset()
        self.mel.truncate(cut)
        self.features.truncate(self.mel.n_rows)
        self._ahead.clear()
        self.interrupts += 1

        close_frame = self.next_frame + INTERRUPT_CLOSE_FRAMES
        self._fill_silence(required_samples(close_frame, self.lookahead_rows))
        self._audio_ms += (time.perf_counter() - started) * 1000
        return [] if self.paced else self._render_ready()

    def _append(self, samples: np.ndarray) -> None:
        if self.mel.append(samples):
            self.features.update(self.mel)
            self._note_frame0_ready()

    def _fill_silence(self, until_sample: int) -> None:
        count = until_sample - self.mel.n_samples
        if count <= 0:
            return
        start = self.mel.n_samples
        self._fills.append((start, start + count))
        self.samples_filled += count
        self._append(np.zeros(count, dtype=np.float32))

    def _note_frame0_ready(self) -> None:
        if self._frame0_ready_at is None and self.ready_frames() > 0:
            self._frame0_ready_at = self.clock()

    # --- frames out -------------------------------------------------------------------------

    def _render_ready(self) -> list[StreamBatch]:
        frames = np.arange(self.next_frame, self.ready_frames())
        batches = []
        for offset in range(0, len(frames), self.core.batch_size):
            indices = frames[offset : offset + self.core.batch_size]
            backgrounds, crops, inference_ms = self._run_unet(indices)
            batches.append(self._batch(indices, backgrounds, crops, inference_ms))
        self.next_frame += len(frames)
        self._release()
        return batches

    def _run_unet(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # One UNet run: background indices int64 [B], crops uint8 [B, 320, 320, 3] and its time.
        started = time.perf_counter()
        spec = self.avatar.spec
        backgrounds = np.array(
            [background_index(self.start_frame + int(i), spec.frame_count) for i in frames],
            dtype=np.int64,
        )
        face = build_face_batch(self.avatar.face_inputs[backgrounds], spec.channel_order)
        audio = self.features.context(frames, self.lookahead_rows, self.avatar.unet.audio_shape)
        crops = mouths_from_output(self.avatar.unet.run(face, audio), spec.channel_order)
        inference_ms = (time.perf_counter() - started) * 1000
        self.core.avatars.registry.record_inference(spec.id, inference_ms)
        return backgrounds, crops, inference_ms

    def _batch(
        self,
        indices: np.ndarray,
        backgrounds: np.ndarray,
        crops: np.ndarray,
        inference_ms: float,
    ) -> StreamBatch:
        fills = self._silence_flags(indices) if self.paced else np.zeros(len(indices), bool)
        self.frames_filled += int(fills.sum())
        batch = StreamBatch(
            frame_indices=indices,
            background_indices=backgrounds,
            crops=crops,
            utterance_frames=self.total_frames or 0,
            audio_ms=self._audio_ms,
            inference_ms=inference_ms,
            model_load_ms=self._load_ms,
            gpu_id=self.avatar.gpu_id,
            silence_fill=fills,
        )
        self._audio_ms = 0.0
        self._load_ms = 0.0
        return batch

    def _silence_flags(self, frames: np.ndarray) -> np.ndarray:
        starts = frames * SAMPLES_PER_FRAME
        flags = np.zeros(len(frames), dtype=bool)
        for fill_start, fill_stop in self._fills:
            flags |= (starts < fill_stop) & (starts + SAMPLES_PER_FRAME > fill_start)
        return flags

    def _release(self) -> None:
        # Keep what frames from next_frame on, and a rewind to sample 640 * next_frame, need.
        cut = self.next_frame * SAMPLES_PER_FRAME
        rows_after_cut = min(self.mel.n_rows, rows_final_at(cut, self.mel.pad_mode))
        windows_after_cut = min(self.features.n_windows, windows_final_at(rows_after_cut))
        self.features.release(max(0, self.next_frame - _HALF_CONTEXT - 1))

        first_window = unclamped_window_start(windows_after_cut)
        rows_from = max(0, min(first_window, self.mel.n_rows - MEL_WINDOW_ROWS))
        self.mel.release(keep_rows_from=rows_from, keep_samples_from=cut)
        self._fills = [(start, stop) for start, stop in self._fills if stop > cut]

    # --- paced mode -------------------------------------------------------------------------

    def _start_time(self) -> float | None:
        if self._start_at is not None:
            return self._start_at
        if self._first_audio_at is None:
            return None
        # Frame 0 is due a margin after its audio arrived, and at the latest a margin after
        # that audio would have arrived in real time.
        frame0_audio_s = required_samples(0, self.lookahead_rows) / TARGET_SAMPLE_RATE
        latest = self._first_audio_at + frame0_audio_s
        ready = latest if self._frame0_ready_at is None else min(self._frame0_ready_at, latest)
        return ready + self.paced_margin_s

    def next_deadline(self) -> float | None:
        """Return the clock time the next frame is due (paced mode), or None if none is."""
        start = self._start_time()
        if not self.paced or start is None or self.done:
            return None
        return start + self.next_frame * FRAME_SECONDS

    def emit_due(self, now: float) -> list[StreamBatch]:
        """Return the frames due at `now` (paced mode), filling an audio underrun with silence.

        Frame i is due at start + i x 40 ms, so the schedule does not drift. Frames that are
        late because rendering fell behind come together in one batch.
        """
        start = self._start_time()
        if not self.paced or start is None or self.done:
            return []
        due = self.next_frame
        while start + due * FRAME_SECONDS <= now:
            due += 1
        if self.finished:
            due = min(due, self.total_frames or 0)
        if due <= self.next_frame:
            return []

        self._start_at = start
        if due > self._rendered_to():
            if due > self.ready_frames():
                # Fill past the due frame by the margin, so that audio arriving in real time
                # after an underrun has the same slack as at the start.
                started = time.perf_counter()
                slack = math.ceil(self.paced_margin_s / FRAME_SECONDS)
                self._fill_silence(required_samples(due - 1 + slack, self.lookahead_rows))
                self._audio_ms += (time.perf_counter() - started) * 1000
            self._render_ahead_frames(due)

        count = due - self.next_frame
        emitted, self._ahead = self._ahead[:count], self._ahead[count:]
        batches = []
        for offset in range(0, count, self.core.batch_size):
            part = emitted[offset : offset + self.core.batch_size]
            indices = np.array([frame for frame, _, _ in part], dtype=np.int64)
            backgrounds = np.array([background for _, background, _ in part], dtype=np.int64)
            crops = np.stack([crop for _, _, crop in part])
            batches.append(self._batch(indices, backgrounds, crops, self._ahead_ms))
            self._ahead_ms = 0.0
        self.next_frame = due
        self._release()
        return batches

    def render_ahead(self) -> None:
        """Render up to `max_ahead` ready frames before they are due (paced mode)."""
        if self.paced:
            self._render_ahead_frames(min(self.ready_frames(), self.next_frame + self.max_ahead))

    def _rendered_to(self) -> int:
        return self._ahead[-1][0] + 1 if self._ahead else self.next_frame

    def _render_ahead_frames(self, stop: int) -> None:
        frames = np.arange(self._rendered_to(), stop)
        for offset in range(0, len(frames), self.core.batch_size):
            indices = frames[offset : offset + self.core.batch_size]
            backgrounds, crops, inference_ms = self._run_unet(indices)
            self._ahead.extend(zip(indices.tolist(), backgrounds.tolist(), crops, strict=True))
            self._ahead_ms += inference_ms
