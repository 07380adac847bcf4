"""wav2lip mel spectrogram in numpy, matching the audio path of SyncTalk_2D's "ave" encoder.

The reference (wav2lip ``audio.py``) computes, on 16 kHz mono audio:

1. pre-emphasis ``y[n] - 0.97 * y[n - 1]`` with ``scipy.signal.lfilter``,
2. a centred STFT with ``librosa.stft`` (n_fft 800, hop 200, periodic Hann window),
3. the magnitude, projected on a Slaney mel filterbank (``librosa.filters.mel``, 80 bins,
   55 to 7600 Hz),
4. ``20 * log10(max(1e-5, S)) - 20`` dB,
5. ``clip(8 * (S + 100) / 100 - 4, -4, 4)``.

This module reproduces those steps without librosa or scipy, in float64 like the reference.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP_LENGTH = 200
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
PAD_MODES = ("constant", "reflect")

# dB conversion and normalisation of wav2lip's hparams: min_level_db -100, ref_level_db 20,
# symmetric output in [-4, 4].
_MIN_AMPLITUDE = 1e-5
_REF_LEVEL_DB = 20.0
_MIN_LEVEL_DB = -100.0
_MAX_ABS_VALUE = 4.0

# Slaney's mel scale, as librosa's hz_to_mel with htk=False: linear below
# 1 kHz at 200/3 Hz per mel, logarithmic above with 27 mels per factor of 6.4.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Convert frequencies in Hz to Slaney mels.

    Parameters
    ----------
    frequencies : np.ndarray, any shape, float
        Frequencies in Hz.

    Returns
    -------
    np.ndarray, same shape, float64
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    linear = frequencies / _LINEAR_HZ_PER_MEL
    logarithmic = (
        _LOG_START_MEL + np.log(np.maximum(frequencies, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    )
    return np.where(frequencies >= _LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Convert Slaney mels to frequencies in Hz (the inverse of `hz_to_mel`).

    Parameters
    ----------
    mels : np.ndarray, any shape, float

    Returns
    -------
    np.ndarray, same shape, float64
        Frequencies in Hz.
    """
    mels = np.asarray(mels, dtype=np.float64)
    linear = _LINEAR_HZ_PER_MEL * mels
    logarithmic = _LOG_START_HZ * np.exp(
        _LOG_STEP * (np.maximum(mels, _LOG_START_MEL) - _LOG_START_MEL)
    )
    return np.where(mels >= _LOG_START_MEL, logarithmic, linear)


def mel_filterbank(
    *,
    sr: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """Build a Slaney-normalised triangular mel filterbank, like ``librosa.filters.mel``.

    The filter edges are ``n_mels + 2`` points evenly spaced on the Slaney mel scale from
    `fmin` to `fmax`. Each filter is scaled by ``2 / (upper edge - lower edge)`` in Hz, so all
    filters have the same area. The weights are computed in float64 and rounded to float32,
    because ``librosa.filters.mel`` returns float32 by default and the reference multiplies
    that float32 matrix with its float64 spectrogram.

    Parameters
    ----------
    sr : int > 0
        Sample rate in Hz.
    n_fft : int > 0
        FFT length.
    n_mels : int > 0
        Number of mel bins.
    fmin, fmax : float, 0 <= fmin < fmax <= sr / 2
        Frequency range in Hz.

    Returns
    -------
    np.ndarray [n_mels, 1 + n_fft // 2], float32
        Read-only, because it is cached per parameter set and shared between callers.
    """
    _validate_filterbank_parameters(sr, n_fft, n_mels, fmin, fmax)
    return _cached_filterbank(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))


def _validate_filterbank_parameters(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> None:
    if sr <= 0 or n_fft <= 0 or n_mels <= 0:
        raise ValueError(
            f"sr, n_fft and n_mels must be positive, got sr={sr}, n_fft={n_fft}, n_mels={n_mels}"
        )
    if not 0.0 <= fmin < fmax <= sr / 2:
        raise ValueError(
            f"the mel range must satisfy 0 <= fmin < fmax <= sr / 2 = {sr / 2}, "
            f"got fmin={fmin}, fmax={fmax}"
        )


@functools.lru_cache(maxsize=16)
def _cached_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    edges_mel = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)

    lower_edges = edges_hz[:-2, np.newaxis]
    centres = edges_hz[1:-1, np.newaxis]
    upper_edges = edges_hz[2:, np.newaxis]
    rising = (bin_hz - lower_edges) / (centres - lower_edges)
    falling = (upper_edges - bin_hz) / (upper_edges - centres)
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)

    # librosa rounds the triangles to float32 before scaling them, and so does this, to give
    # bit-identical weights.
    areas = 2.0 / (upper_edges - lower_edges)
    filterbank = (triangles * areas).astype(np.float32)
    filterbank.flags.writeable = False
    return filterbank


@functools.lru_cache(maxsize=16)
def _cached_projection(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    # The float32 weights, widened to float64 and transposed, give the same products as the
    # reference's np.dot of float32 weights and a float64 spectrogram.
    filterbank = _cached_filterbank(sr, n_fft, n_mels, fmin, fmax)
    projection = np.ascontiguousarray(filterbank.T, dtype=np.float64)
    projection.flags.writeable = False
    return projection


@functools.lru_cache(maxsize=16)
def _cached_window(win_length: int, n_fft: int) -> np.ndarray:
    # Periodic Hann window (scipy's get_window("hann", fftbins=True)), zero-padded on both
    # sides to n_fft like librosa.util.pad_center.
    phases = np.linspace(-np.pi, np.pi, win_length + 1)[:-1]
    hann = 0.5 + 0.5 * np.cos(phases)
    window = np.zeros(n_fft, dtype=np.float64)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = hann
    window.flags.writeable = False
    return window


def melspectrogram(
    y: np.ndarray,
    *,
    sr: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    win_length: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
    preemphasis: float = PREEMPHASIS,
    pad_mode: str = "constant",
) -> np.ndarray:
    """Compute wav2lip's normalised log-mel spectrogram.

    Parameters
    ----------
    y : np.ndarray [n], float
        Mono audio at `sr` Hz, not empty, finite. Samples beyond [-1, 1] are allowed.
    sr : int
        Sample rate in Hz.
    n_fft, hop_length, win_length : int
        STFT size, hop and Hann window length, with ``0 < win_length <= n_fft``.
    n_mels : int
        Number of mel bins.
    fmin, fmax : float
        Mel range in Hz.
    preemphasis : float
        Pre-emphasis coefficient ``k`` of ``y[n] - k * y[n - 1]``.
    pad_mode : {"constant", "reflect"}
        Padding of the ``n_fft // 2`` samples added at each end to centre the frames.
        "constant" pads with zeros, the default of ``librosa.stft`` since librosa 0.10.
        "reflect" was the default of older librosa versions used by some wav2lip set-ups.

    Returns
    -------
    np.ndarray [1 + n // hop_length, n_mels], float32
        For even `n_fft`. Time-major (the transpose of librosa's layout), values in [-4, 4].
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"y must have a floating-point dtype, got {y.dtype}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if hop_length <= 0 or not 0 < win_length <= n_fft:
        raise ValueError(
            "hop_length must be positive and 0 < win_length <= n_fft, got "
            f"hop_length={hop_length}, win_length={win_length}, n_fft={n_fft}"
        )
    if not np.isfinite(y).all():
        raise ValueError(f"y contains {np.count_nonzero(~np.isfinite(y))} NaN or Inf samples")
    _validate_filterbank_parameters(sr, n_fft, n_mels, fmin, fmax)

    padded = _preemphasize_and_pad(y, preemphasis, n_fft // 2, pad_mode)
    window = _cached_window(int(win_length), int(n_fft))
    projection = _cached_projection(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))
    mel = _mel_magnitudes(padded, window, projection, hop_length)
    return _normalize_db(mel).astype(np.float32)


def _preemphasize_and_pad(
    y: np.ndarray, preemphasis: float, padding: int, pad_mode: str
) -> np.ndarray:
    # This gives the values of scipy.signal.lfilter([1, -k], [1], y), which upcasts float32
    # audio to float64 and takes y[-1] as 0.
    samples = y.astype(np.float64, copy=False)
    padded = np.zeros(samples.size + 2 * padding, dtype=np.float64)
    emphasized = padded[padding : padding + samples.size]
    emphasized[0] = samples[0]
    np.subtract(samples[1:], preemphasis * samples[:-1], out=emphasized[1:])

    if pad_mode == "reflect":
        # np.pad reflects repeatedly when the signal is shorter than the padding, as librosa
        # does through np.pad.
        padded = np.pad(emphasized, padding, mode="reflect")
    return padded


# Frames transformed per block. At this size the windowed frames and their spectra (about 3 MB
# in float64) stay in cache: a minute of audio took about 40% less time than with one transform
# over all frames (numpy 2.4, 2-core x86 VM).
_FRAMES_PER_BLOCK = 256

# Mel rows per matrix product with the filterbank. BLAS rounds a row's products differently
# depending on how many rows one call multiplies (with numpy 2.4 and its OpenBLAS, 1, 16 and 256
# rows give different last bits). So every product takes exactly this many rows, zero-padded,
# with row t at position t % PROJECTION_BLOCK_ROWS. A row's value then does not depend on how
# the rows are grouped, and a stream that computes a few rows at a time gets the same rows as
# the whole-utterance spectrogram.
PROJECTION_BLOCK_ROWS = 16


def _mel_magnitudes(
    padded: np.ndarray,
    window: np.ndarray,
    projection: np.ndarray,
    hop_length: int,
    first_row: int = 0,
) -> np.ndarray:
    n_fft = window.size
    n_frames = 1 + (padded.size - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(hop_length * padded.strides[0], padded.strides[0]),
        writeable=False,
    )

    mel = np.empty((n_frames, projection.shape[1]), dtype=np.float64)
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):
        stop = min(start + _FRAMES_PER_BLOCK, n_frames)
        spectrum = np.fft.rfft(frames[start:stop] * window, axis=-1)
        mel[start:stop] = _project(np.abs(spectrum), projection, first_row + start)
    return mel


def _project(magnitudes: np.ndarray, projection: np.ndarray, first_row: int) -> np.ndarray:
    # Rows [first_row, first_row + n) placed in zero-padded blocks aligned to absolute row
    # indices, multiplied block by block in one stacked matmul (one BLAS call per block).
    block = PROJECTION_BLOCK_ROWS
    n_rows, n_bins = magnitudes.shape
    offset = first_row % block
    n_blocks = -(-(offset + n_rows) // block)
    if offset == 0 and n_blocks * block == n_rows:
        blocks = magnitudes.reshape(n_blocks, block, n_bins)
    else:
        blocks = np.zeros((n_blocks, block, n_bins), dtype=magnitudes.dtype)
        blocks.reshape(-1, n_bins)[offset : offset + n_rows] = magnitudes
    products = np.matmul(blocks, projection).reshape(-1, projection.shape[1])
    return products[offset : offset + n_rows]


def mel_rows(
    padded: np.ndarray,
    first_row: int,
    *,
    sr: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    win_length: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """Compute consecutive rows of `melspectrogram` from a slice of its padded signal.

    This is the incremental form of `melspectrogram` for streams: row ``first_row + r`` is
    bit-identical to row ``first_row + r`` of `melspectrogram` on the whole signal, whatever
    rows are computed together.

    Parameters
    ----------
    padded : np.ndarray [n], float64
        The pre-emphasized signal with its ``n_fft // 2`` samples of padding at both ends, from
        padded sample ``first_row * hop_length`` on. It must hold whole frames only:
        ``n >= n_fft`` and ``(n - n_fft) % hop_length == 0``.
    first_row : int >= 0
        Index of the first row in the whole spectrogram.
    sr, n_fft, hop_length, win_length, n_mels, fmin, fmax
        As in `melspectrogram`.

    Returns
    -------
    np.ndarray [1 + (n - n_fft) // hop_length, n_mels], float32
        Values in [-4, 4].
    """
    padded = np.asarray(padded)
    if padded.ndim != 1 or padded.dtype != np.float64:
        raise ValueError(
            f"padded must be a 1-D float64 array, got {padded.dtype} of shape {padded.shape}"
        )
    if padded.size < n_fft or (padded.size - n_fft) % hop_length:
        raise ValueError(
            f"padded has {padded.size} samples, which is not n_fft ({n_fft}) plus a whole "
            f"number of hops of {hop_length}"
        )
    if first_row < 0:
        raise ValueError(f"first_row must be 0 or more, got {first_row}")
    _validate_filterbank_parameters(sr, n_fft, n_mels, fmin, fmax)

    window = _cached_window(int(win_length), int(n_fft))
    projection = _cached_projection(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))
    mel = _mel_magnitudes(padded, window, projection, hop_length, first_row)
    return _normalize_db(mel).astype(np.float32)


def _normalize_db(mel: np.ndarray) -> np.ndarray:
    # In place on the float64 mel magnitudes, in the reference's operation order.
    np.maximum(mel, _MIN_AMPLITUDE, out=mel)
    np.log10(mel, out=mel)
    mel *= 20.0
    mel -= _REF_LEVEL_DB

    mel -= _MIN_LEVEL_DB
    mel /= -_MIN_LEVEL_DB
    mel *= 2.0 * _MAX_ABS_VALUE
    mel -= _MAX_ABS_VALUE
    np.clip(mel, -_MAX_ABS_VALUE, _MAX_ABS_VALUE, out=mel)
    return mel
