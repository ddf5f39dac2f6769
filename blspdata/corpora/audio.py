"""Audio headers and conversion, shared by the importers.

Headers come from libsndfile (`soundfile`): FLAC, WAV, OGG/Opus. MELD's mp4 videos are
decoded with PyAV (FFmpeg bundled in its wheel) and written as 16 kHz mono FLAC.
Every failure is an `AudioError` carrying a reject reason.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_RATE = 16000


class AudioError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _flac_streaminfo(path: str) -> tuple[int, int] | None:
    """`(frames, sample_rate)` from a FLAC file's STREAMINFO block, or None to ask libsndfile.

    Reading these 42 bytes ourselves is ~7x faster than `soundfile.info`, which matters for
    corpora of millions of FLAC files (LibriSpeech); anything unusual falls back.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(42)
    except OSError:
        return None
    # "fLaC", then a metadata block header whose type (low 7 bits) is 0 = STREAMINFO, then
    # 10 bytes of block/frame sizes and 64 bits: 20 sample rate, 3 channels, 5 bps, 36 total samples.
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    packed = int.from_bytes(head[18:26], "big")
    rate, frames = packed >> 44, packed & ((1 << 36) - 1)
    return (frames, rate) if frames > 0 and rate > 0 else None


def probe(path: str) -> tuple[int, int]:
    """Return `(frames, sample_rate)` from the file header, or raise AudioError."""
    if path.endswith(".flac"):
        found = _flac_streaminfo(path)
        if found is not None:
            return found
    try:
        info = sf.info(path)
    except FileNotFoundError:
        raise AudioError("audio_missing", f"no such file: {path}") from None
    except Exception as exc:  # libsndfile's errors are RuntimeError/LibsndfileError/TypeError
        if not os.path.exists(path):
            raise AudioError("audio_missing", f"no such file: {path}") from None
        if os.path.getsize(path) == 0:
            raise AudioError("audio_empty", f"zero-length file: {path}") from None
        raise AudioError("audio_unreadable", f"{path}: {exc}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("audio_empty", f"no audio frames in {path}")
    return int(info.frames), int(info.samplerate)


def extract_to_flac(source: str, target: str, rate: int = TARGET_RATE) -> bool:
    """Decode the audio stream of `source` (any FFmpeg container, e.g. MELD's mp4) to mono
    `rate` Hz 16-bit FLAC at `target`. Skipped when `target` exists with the source's
    modification time (it was extracted from this very file). Returns True if it wrote.

    The FLAC is written to a temporary name and renamed, so an interrupted extraction
    never leaves a truncated file that a rerun would take as done.
    """
    src_stat = _stat_or_missing(source)
    try:
        if os.stat(target).st_mtime_ns == src_stat.st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    if src_stat.st_size == 0:
        raise AudioError("audio_empty", f"zero-length file: {source}")
    samples = _decode(source, rate)
    if samples.size == 0:
        raise AudioError("audio_empty", f"no audio samples in {source}")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".flac.tmp", dir=os.path.dirname(target) or ".")
    os.close(fd)
    try:
        sf.write(tmp, samples, rate, format="FLAC", subtype="PCM_16")
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _stat_or_missing(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise AudioError("audio_missing", f"no such file: {path}") from None


def _decode(source: str, rate: int) -> np.ndarray:
    import av  # imported here: only MELD-style sources need it

    chunks: list[np.ndarray] = []
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                raise AudioError("audio_unreadable", f"{source}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise AudioError("audio_unreadable", f"{source}: {exc}") from None
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
