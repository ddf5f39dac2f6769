"""Audio, below every stage that touches it: headers and conversion for ingest (`probe`,
`extract_to_flac`), segments decoded and resampled to `RATE` for publish, the trainer and
evaluate (`read_segment`, `resample`), and the one FLAC STREAMINFO parser (`flac_streaminfo`).

Headers come from libsndfile (`soundfile`): FLAC, WAV, OGG/Opus. MELD's mp4 videos are
decoded with PyAV (FFmpeg bundled in its wheel) and written as 16 kHz mono FLAC; audio held in
memory (a Hub dataset's embedded files) is written out as FLAC by `write_flac`.
Every failure in `probe`, `extract_to_flac` and `write_flac` is an `AudioError` carrying a reject reason.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from blspdata.errors import BlspdataError

# The rate of everything published and trained on (the Whisper encoder's input rate).
RATE = 16000


class AudioError(Exception):
    """One input's audio cannot be used: becomes a reject with `reason` (not a user error)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class AudioWriteError(BlspdataError):
    """Extracted audio cannot be written (a full disk, no permission): the run stops, as every
    clip after would fail the same way. The clips written before it are kept for a rerun."""


# The smallest a FLAC frame can be (header, a constant subframe, CRC-16): the size check's
# floor when STREAMINFO does not say how small this file's frames are.
MIN_FLAC_FRAME_BYTES = 8


def flac_streaminfo(head: bytes) -> tuple[int, int, int, int] | None:
    """`(sample_rate, channels, bits_per_sample, frames)` from a FLAC file's first 42 bytes, or
    None when they do not start with a STREAMINFO block.

    "fLaC", then a metadata block header whose type (low 7 bits) is 0 = STREAMINFO, then 10 bytes
    of block/frame sizes and 64 bits: 20 sample rate, 3 channels - 1, 5 bits - 1, 36 total samples.
    """
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    packed = int.from_bytes(head[18:26], "big")
    return packed >> 44, ((packed >> 41) & 7) + 1, ((packed >> 36) & 31) + 1, packed & ((1 << 36) - 1)


def _flac_streaminfo(path: str) -> tuple[int, int] | None:
    """`(frames, sample_rate)` from a FLAC file's STREAMINFO block, or None to ask libsndfile.

    Reading these 42 bytes ourselves is ~7x faster than `soundfile.info`, which matters for
    corpora of millions of FLAC files (LibriSpeech); anything unusual falls back. Neither
    reads the audio, so a file cut short is caught by `_flac_truncation` (AudioError).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(42)
            info = flac_streaminfo(head)
            if info is None:
                return None
            rate, _, _, frames = info
            if frames <= 0 or rate <= 0:
                return None
            problem, last_first = _flac_truncation(handle, head, samples=frames)
    except OSError:
        return None
    if problem is None:
        problem = _flac_last_frame_decodes(path, last_first, frames)
    if problem:
        raise AudioError("audio_truncated", f"{path}: truncated FLAC: {problem}")
    return frames, rate


def _flac_last_frame_decodes(path: str, first: int, samples: int) -> str | None:
    """Why the last frame (samples `first`..`samples`) does not decode, or None.

    A file cut inside its last frame still has that frame's header, so only decoding finds it
    (libFLAC loses sync at the cut). One frame, ~0.2 ms a file: the price of never publishing
    an utterance whose end is noise.
    """
    try:
        with sf.SoundFile(path) as handle:
            handle.seek(first)
            got = len(handle.read(samples - first, dtype="int16"))
    except Exception as exc:  # libsndfile's errors: RuntimeError/LibsndfileError
        return f"its last frame (samples {first}-{samples}) does not decode: {exc}"
    if got != samples - first:
        return f"its last frame (samples {first}-{samples}) decodes to {got} samples"
    return None


def _flac_truncation(handle, head: bytes, samples: int) -> tuple[str | None, int]:
    """Why the open FLAC file cannot hold the `samples` (per channel) its STREAMINFO promises, or
    None; and the first sample of its last frame (for `_flac_last_frame_decodes`).

    Cheap (the metadata block headers, two bytes, and the file's last frame or so; no audio is
    decoded): the audio must start right after the last metadata block with a frame sync code
    (0xFFF8/0xFFF9), the file must be big enough for the FLAC frames those samples need, and
    its last frame must end at sample `samples` (`_flac_last_frame`).
    """
    size = os.fstat(handle.fileno()).st_size
    start, last = 4, False
    while not last:  # each block header: 1 bit "last block", 7 bits type, 24 bits length
        handle.seek(start)
        header = handle.read(4)
        if len(header) < 4:
            return f"the file ({size} bytes) ends inside its metadata blocks", 0
        last = bool(header[0] & 0x80)
        start += 4 + int.from_bytes(header[1:4], "big")
    handle.seek(start)
    sync = handle.read(2)
    if len(sync) < 2 or sync[0] != 0xFF or sync[1] & 0xFE != 0xF8:
        return f"no audio frame after the metadata blocks (byte {start} of {size})", 0
    # STREAMINFO: bytes 10-12 the largest block (samples per frame; under 16 is invalid, so take
    # FLAC's largest), 12-15 the smallest frame in bytes (0 = unknown).
    max_block, min_frame = int.from_bytes(head[10:12], "big"), int.from_bytes(head[12:15], "big")
    flac_frames = -(-samples // (max_block if max_block >= 16 else 65535))
    needed = start + flac_frames * max(min_frame, MIN_FLAC_FRAME_BYTES)
    if size < needed:
        return f"{size} bytes, but {samples} samples need at least {needed}", 0
    return _flac_last_frame(handle, head, audio_start=start, size=size, sync=sync[1], samples=samples)


# FLAC frame header fields (RFC 9639 section 9.1): sample rate codes 1-11 in Hz, sample size
# codes in bits (0 = "see STREAMINFO"; 3 is reserved).
_FLAC_RATES = {1: 88200, 2: 176400, 3: 192000, 4: 8000, 5: 16000, 6: 22050, 7: 24000, 8: 32000,
               9: 44100, 10: 48000, 11: 96000}
_FLAC_BITS = {1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}
# The largest frame header: 4 fixed bytes, a 7-byte coded number, 2 + 2 optional bytes, CRC-8.
_FLAC_MAX_HEADER = 16
# Room for bytes some taggers append after the last frame (an ID3v1 tag is 128).
_FLAC_TRAILER = 4096


def _crc8_table() -> bytes:
    table = []
    for byte in range(256):  # CRC-8, polynomial x^8 + x^2 + x + 1 (0x07), initial 0
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return bytes(table)


_CRC8 = _crc8_table()


def _flac_last_frame(handle, head: bytes, *, audio_start: int, size: int, sync: int,
                     samples: int) -> tuple[str | None, int]:
    """Why the file's last frame does not end at sample `samples`, or None; and that frame's first sample.

    Reads only the tail: one frame's worth of bytes (STREAMINFO's largest frame, or the most an
    uncompressed frame can take), where the last frame header must be. A header is the sync
    code (0xFFF8 fixed / 0xFFF9 variable block size, as in the first frame), its fields, and a
    CRC-8 over them; its UTF-8-style coded number is the frame number (fixed) or the first
    sample (variable). The file is whole when such a header's frame ends exactly at `samples`;
    any header is tried, not only the last, so a sync-like byte pair in the audio data (with a
    CRC-8 that happens to check) cannot reject an intact file.
    """
    rate, channels, bits, _ = flac_streaminfo(head)
    max_block, max_frame = int.from_bytes(head[10:12], "big"), int.from_bytes(head[15:18], "big")
    largest = max_frame or (max_block or 65535) * channels * (bits + 1) // 8 + 64
    begin = max(audio_start, size - largest - _FLAC_MAX_HEADER - _FLAC_TRAILER)
    handle.seek(begin)
    tail = handle.read(size - begin)
    pattern = bytes((0xFF, sync))
    found: list[tuple[int, int, int]] = []  # (byte, first sample, block size) of each header
    at = len(tail)
    while (at := tail.rfind(pattern, 0, at)) >= 0:
        header = _flac_frame_header(tail, at, rate=rate, channels=channels, bits=bits)
        if header is not None:
            number, block = header
            first = number if sync & 1 else number * max_block
            if first + block == samples:
                return None, first
            found.append((begin + at, first, block))
    if not found:
        return f"no frame header in its last {len(tail)} bytes (of {size})", 0
    byte, first, block = found[0]
    return (f"its last frame (at byte {byte} of {size}) holds samples {first}-{first + block}, "
            f"but STREAMINFO says {samples}"), first


def _flac_frame_header(buf: bytes, at: int, *, rate: int, channels: int, bits: int) -> tuple[int, int] | None:
    """`(coded number, block size)` of a frame header at `buf[at]` (after its sync code) that fits
    the stream's STREAMINFO and whose CRC-8 checks, or None."""
    if at + 6 > len(buf):
        return None
    size_code, rate_code = buf[at + 2] >> 4, buf[at + 2] & 0x0F
    channel_code, bits_code = buf[at + 3] >> 4, (buf[at + 3] >> 1) & 7
    if size_code == 0 or rate_code == 15 or channel_code > 10 or buf[at + 3] & 1 or bits_code == 3:
        return None
    if (channel_code + 1 if channel_code < 8 else 2) != channels:
        return None
    if bits_code and _FLAC_BITS[bits_code] != bits or rate_code in _FLAC_RATES and _FLAC_RATES[rate_code] != rate:
        return None
    # The coded number, like UTF-8: 0xxxxxxx, or n leading 1 bits then n-1 bytes 10xxxxxx.
    lead = buf[at + 4]
    ones = 8 - (~lead & 0xFF).bit_length()
    if ones == 1 or ones == 8:
        return None
    number, pos = lead & (0x7F >> ones), at + 5
    for _ in range(max(ones - 1, 0)):
        if pos >= len(buf) or buf[pos] & 0xC0 != 0x80:
            return None
        number, pos = number << 6 | buf[pos] & 0x3F, pos + 1
    extra = (1 if size_code == 6 else 2 if size_code == 7 else 0)
    if pos + extra + (1 if rate_code == 12 else 2 if rate_code in (13, 14) else 0) >= len(buf):
        return None
    if size_code == 1:
        block = 192
    elif size_code <= 5:
        block = 576 << (size_code - 2)
    elif size_code <= 7:
        block = int.from_bytes(buf[pos:pos + extra], "big") + 1
    else:
        block = 256 << (size_code - 8)
    pos += extra
    if rate_code >= 12:
        width = 1 if rate_code == 12 else 2
        value = int.from_bytes(buf[pos:pos + width], "big") * (1000 if rate_code == 12 else 10 if rate_code == 14 else 1)
        if value != rate:
            return None
        pos += width
    crc = 0
    for byte in buf[at:pos]:
        crc = _CRC8[crc ^ byte]
    return (number, block) if crc == buf[pos] else None


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
    frames = int(info.frames)
    if frames >= 2**62:  # libsndfile's "unknown": a stream that never recorded its length
        raise AudioError("audio_unreadable", f"{path}: the header does not give the length (a FLAC written to a "
                                             "pipe?); libsndfile cannot seek in it: re-encode the file")
    if frames <= 0 or info.samplerate <= 0:
        raise AudioError("audio_empty", f"no audio frames in {path}")
    return frames, int(info.samplerate)


def extract_to_flac(source: str, target: str, rate: int = RATE) -> bool:
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
    folder = os.path.dirname(target) or "."
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".flac.tmp", dir=folder)
    except OSError as exc:
        raise AudioWriteError(_write_problem(target, exc, samples.nbytes)) from None
    os.close(fd)
    try:
        sf.write(tmp, samples, rate, format="FLAC", subtype="PCM_16")
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; readable like every other output (atomic_path)
        os.replace(tmp, target)
    except (sf.LibsndfileError, OSError) as exc:  # libsndfile says only "System error." for ENOSPC
        Path(tmp).unlink(missing_ok=True)
        raise AudioWriteError(_write_problem(target, exc, samples.nbytes)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# Subtypes kept at 24 bits when re-encoded to FLAC (which has no float samples); the rest 16.
_DEEP = {"PCM_24", "PCM_32", "FLOAT", "DOUBLE"}


def write_flac(data: bytes, target: str, stamp_ns: int | None = None, name: str | None = None) -> bool:
    """Write an encoded audio file held in memory (`data`: a Hub dataset's embedded bytes) to
    `target` as FLAC, once: skipped when `target` exists with modification time `stamp_ns` (the
    source's, set on the file written). Returns True if it wrote. `name` names the source in errors.

    FLAC is copied as it is; what libsndfile reads (WAV, OGG, MP3, ...) is re-encoded at its
    native rate and channels (16 or 24 bit); anything else (AAC, ...) is decoded with PyAV to
    16 kHz mono, as `extract_to_flac` does. Written to a temporary name and renamed.
    """
    import io

    name = name or target
    if stamp_ns is not None:
        try:
            if os.stat(target).st_mtime_ns == stamp_ns:
                return False
        except FileNotFoundError:
            pass
    if not data:
        raise AudioError("audio_empty", f"zero-length audio: {name}")
    samples, rate, subtype = None, RATE, "PCM_16"
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            native = audio.format == "FLAC"
            if not native:
                deep = audio.subtype in _DEEP
                if audio.samplerate <= 655350 and audio.channels <= 8:  # FLAC's limits
                    # int32 is full scale to libsndfile: writing PCM_24 keeps the top 24 bits
                    samples = audio.read(dtype="int32" if deep else "int16", always_2d=True)
                    rate, subtype = audio.samplerate, "PCM_24" if deep else "PCM_16"
    except Exception:  # not a format libsndfile reads (its errors are RuntimeError/LibsndfileError/TypeError)
        native = False
    if samples is None and not native:
        try:
            samples = _decode(io.BytesIO(data), RATE)
        except AudioError as exc:  # its detail names a BytesIO: name the source instead
            raise AudioError(exc.reason, f"{name}: {len(data)} bytes that neither libsndfile nor FFmpeg decodes "
                                         f"({exc.detail.split(': ', 1)[-1]})") from None
    if samples is not None and samples.size == 0:
        raise AudioError("audio_empty", f"no audio samples in {name}")
    folder = os.path.dirname(target) or "."
    needed = len(data) if samples is None else samples.nbytes
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".flac.tmp", dir=folder)
    except OSError as exc:
        raise AudioWriteError(_write_problem(target, exc, needed)) from None
    os.close(fd)
    try:
        if samples is None:
            Path(tmp).write_bytes(data)
        else:
            sf.write(tmp, samples, rate, format="FLAC", subtype=subtype)
        if stamp_ns is not None:
            os.utime(tmp, ns=(stamp_ns, stamp_ns))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except (sf.LibsndfileError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AudioWriteError(_write_problem(target, exc, needed)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _write_problem(target: str, exc: BaseException, needed: int) -> str:
    """One line for a failed write of `target`: a full disk says so (libsndfile does not)."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(os.path.dirname(target) or ".").free
    except OSError:
        free = None
    if getattr(exc, "errno", None) == errno.ENOSPC or free is not None and free < needed:
        why = f"no space left on the device ({free:,} bytes free)" if free is not None else "no space left on the device"
    else:
        why = str(getattr(exc, "strerror", None) or exc)
    return (f"cannot write extracted audio {target}: {why}. The partial file is removed; the clips "
            "extracted before it are kept, and a rerun (with space freed, or another --audio-dir) skips them")


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


# ---------------------------------------------------------------------------- segments

def read_segment(path: str, offset: float, duration: float) -> np.ndarray:
    """The segment as float32 mono at `RATE` (16 kHz); `duration` 0 reads to the end."""
    with sf.SoundFile(path) as audio:
        rate = audio.samplerate
        start = int(round(offset * rate))
        frames = int(round(duration * rate)) if duration > 0 else -1
        audio.seek(start)
        data = audio.read(frames, dtype="float32", always_2d=True)
    channels = data.shape[1]
    # The mean of the channels (FFmpeg's downmix adds them at -3 dB, which can clip); one BLAS
    # pass, where a sum over the interleaved axis is a slow strided loop.
    data = data[:, 0] if channels == 1 else data @ np.full(channels, 1 / channels, dtype=np.float32)
    return resample(data, rate) if rate != RATE else data


def resample(data: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at `rate` -> `RATE` (FFmpeg's resampler through PyAV)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.reshape(1, -1)), format="flt", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
