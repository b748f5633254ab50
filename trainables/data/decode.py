"""Decode image files once into one uint8 array, skipping unreadable and blank ones.

Decoding is the slow step of small-image training (a 96 px JPEG takes ~0.2 ms to decode
and ~0 ms to push through a GPU), so it is done once per dataset, in a thread pool
(Pillow releases the GIL while decoding), straight into a preallocated ``(N, H, W, C)``
array. An image that cannot be decoded, or that is a near-blank patch, is recorded and
skipped rather than raised: one bad file in 26,000 should not stop a study.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dicom import DicomError, open_image
from .errors import DataError

logger = logging.getLogger(__name__)

#: Bump when decoding changes its output (resampling, conversion, blank rule): it is part
#: of the cache key, so old caches are ignored instead of silently reused.
DECODER_VERSION = 1

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
OK, UNREADABLE, BLANK = 0, 1, 2


@dataclass(frozen=True)
class BlankRule:
    """Near-blank test: very bright or very dark overall, and almost no spatial variation.

    The spatial standard deviation is taken per channel and the largest one is used, so
    a uniformly tinted glass patch counts as flat (a pooled RGB std would mistake its
    colour for texture), while a patch with a few stained nuclei does not.

    Attributes:
        white: mean >= white counts as bright (background glass).
        black: mean <= black counts as dark (scanner border).
        max_std: at most this spatial std (0-255 scale) counts as flat.
    """

    white: float
    black: float
    max_std: float

    def is_blank(self, image: np.ndarray) -> bool:
        """Whether one ``(H, W, C)`` uint8 image is near-blank."""
        mean = float(image.mean())
        if self.black < mean < self.white:  # the common case: one cheap pass, no std
            return False
        return float(image.reshape(-1, image.shape[-1]).std(axis=0).max()) <= self.max_std

    def mask(self, images: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Vectorised :meth:`is_blank` over ``(N, H, W, C)``."""
        out = np.zeros(len(images), bool)
        for lo in range(0, len(images), chunk):
            block = images[lo:lo + chunk].astype(np.float32)
            mean = block.mean(axis=(1, 2, 3))
            std = block.std(axis=(1, 2)).max(axis=-1)
            out[lo:lo + chunk] = ((mean >= self.white) | (mean <= self.black)) & (std <= self.max_std)
        return out


@dataclass
class Decoded:
    """Result of decoding a list of images.

    Attributes:
        images: uint8 ``(M, H, W, C)``, C-contiguous, the kept images in input order.
        kept: int64 indices (into the input list) of the kept images.
        unreadable: input index -> reason, for files that could not be decoded.
        blank: input indices of near-blank images that were dropped.
        seconds: wall time spent decoding.
    """

    images: np.ndarray
    kept: np.ndarray
    unreadable: dict[int, str]
    blank: list[int]
    seconds: float


def check_decode_settings(image_size: object, channels: object) -> None:
    """Second line of defence behind the config checks: refuse sizes and channel counts
    the decoder cannot produce, before any image is touched.

    ``channels: 2`` would otherwise decode every image as RGB and fail to reshape it, so
    every file would be reported "unreadable" instead of the setting being named.
    """
    if channels is not None and not (_is_int(channels) and channels in (1, 3)):
        raise DataError(f"`channels` must be null, 1 or 3, but got channels={channels!r}; set data.channels "
                        "to 1 (grayscale), 3 (RGB) or null (1 when every image is grayscale, else 3)")
    if image_size is not None and not (_is_int(image_size) and image_size >= 1):
        raise DataError(f"`image_size` must be null (native size) or an integer >= 1, but got "
                        f"image_size={image_size!r}; set data.image_size to e.g. 64")


def _is_int(value: object) -> bool:
    """A true integer: ``int`` or a numpy integer, never ``bool`` (``True == 1``) or ``3.0``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def available_memory() -> tuple[int | None, str]:
    """Bytes of memory a new allocation can use now, and where that number came from.

    ``MemAvailable`` of ``/proc/meminfo`` (free plus reclaimable cache), capped by a
    cgroup v2 memory limit when the process runs in one (a container's limit is what
    the kernel's OOM killer enforces); without ``/proc``, the physical memory
    (``SC_PHYS_PAGES * SC_PAGE_SIZE``). ``(None, reason)`` when nothing is known.
    """
    amount: int | None = None
    where = "unknown"
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    amount, where = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
                    break
    except (OSError, ValueError, IndexError):
        pass
    if amount is None:
        try:
            amount = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = "physical memory"
        except (OSError, ValueError, AttributeError):
            return None, where
    try:
        with open("/sys/fs/cgroup/memory.max") as stream:
            limit = stream.read().strip()
        with open("/sys/fs/cgroup/memory.current") as stream:
            current = int(stream.read().strip())
        if limit != "max" and int(limit) - current < amount:
            amount, where = max(0, int(limit) - current), "the cgroup limit /sys/fs/cgroup/memory.max less its usage"
    except (OSError, ValueError):
        pass
    return amount, where


def check_decoded_size(n: int, height: int, width: int, channels: int, image_size: int | None) -> None:
    """Refuse a decode whose output array alone would not fit in the memory available.

    The estimate is ``n * height * width * channels`` bytes (uint8). Without this check
    ``image_size: 100000`` ends in a numpy ``MemoryError`` traceback (or, below the
    kernel's overcommit limit, in the OOM killer halfway through decoding).

    Raises:
        DataError: naming ``data.image_size``, the estimate and the memory available, in GiB.
    """
    need = n * height * width * channels
    have, where = available_memory()
    if have is None or need <= have:
        return
    now = (f"image_size={image_size}" if image_size else f"image_size=null, the native {width}x{height}")
    raise DataError(f"decoding {n} images to {height}x{width}x{channels} uint8 needs about {need / 2**30:.1f} GiB, "
                    f"but only {have / 2**30:.1f} GiB of memory is available ({where}); set a smaller "
                    f"`data.image_size` (now {now}; half the size needs a quarter of the memory)"
                    + (", or channels: 1 for grayscale data" if channels == 3 else ""))


def default_workers() -> int:
    """Decode threads: one per core (decoding is CPU-bound and releases the GIL)."""
    return max(1, min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def decode_files(
    read: Callable[[int], bytes],
    paths: Sequence[str],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    blank: BlankRule | None = None,
    workers: int | None = None,
    window: tuple[float, float] | None = None,
) -> Decoded:
    """Decode images ``0..len(paths)-1`` into one array.

    Args:
        read: returns the encoded bytes of image ``i``; called from several threads.
        paths: names for messages, one per image.
        image_size: resize every image to ``image_size`` x ``image_size`` (aspect not
            kept); None keeps the native size, which must then be the same everywhere.
        channels: 1 (grayscale) or 3 (RGB); None = 1 when every image is grayscale, else 3.
        blank: drop images this rule calls blank; None keeps them.
        workers: decode threads (default: one per core).
        window: DICOM files only: ``(centre, width)`` instead of the file's own window
            (:mod:`trainables.data.dicom`).

    Returns:
        The kept images and what was skipped, and why.

    Raises:
        DataError: ``image_size`` is None and the images differ in size (names the first
            file that differs and the fix); ``channels`` or ``image_size`` is not a valid
            setting; the decoded array would not fit in the memory available.
    """
    check_decode_settings(image_size, channels)
    start = time.perf_counter()
    n = len(paths)
    probe, probe_gray, probe_hw = _probe(read, n, image_size)
    if probe is None:  # nothing decodes: report every file as unreadable
        reasons = {i: _reason(read, i) for i in range(n)}
        return Decoded(np.empty((0, 1, 1, channels or 3), np.uint8), np.empty(0, np.int64), reasons, [],
                       time.perf_counter() - start)
    detect = channels is None
    c = channels or (1 if probe_gray else 3)
    h, w = (image_size, image_size) if image_size else probe_hw
    check_decoded_size(n, h, w, c, image_size)
    out = np.empty((n, h, w, c), np.uint8)
    status = np.zeros(n, np.int8)
    reasons: dict[int, str] = {}
    mismatch: list[int] = []
    stop, colour = threading.Event(), threading.Event()

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            if stop.is_set():
                return
            try:
                array, gray = _decode_one(read(i), c, image_size, window)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
                status[i] = UNREADABLE
                reasons[i] = _describe(exc)
                continue
            if array.shape[:2] != (h, w):
                mismatch.append(i)
                stop.set()
                return
            if detect and c == 1 and not gray:
                colour.set()
                stop.set()
                return
            out[i] = array
            if blank is not None and blank.is_blank(array):
                status[i] = BLANK

    workers = workers or default_workers()
    chunk = max(8, min(256, math.ceil(n / (workers * 4))))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        list(pool.map(lambda lo: work(lo, min(n, lo + chunk)), range(0, n, chunk)))
    if colour.is_set():
        logger.info("grayscale and colour images are mixed: decoding all as RGB")
        return decode_files(read, paths, image_size=image_size, channels=3, blank=blank, workers=workers,
                            window=window)
    if mismatch:
        raise _size_error(read, paths, min(mismatch), probe, probe_hw)
    kept = np.flatnonzero(status == OK)
    images = _compact(out, kept)
    blank_idx = np.flatnonzero(status == BLANK).tolist()
    return Decoded(images, kept.astype(np.int64), dict(sorted(reasons.items())), blank_idx,
                   time.perf_counter() - start)


def convert_arrays(
    images: np.ndarray,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    blank: BlankRule | None = None,
    workers: int | None = None,
) -> Decoded:
    """Apply the same channel, size and blank rules to already-decoded ``(N, H, W, C)`` arrays.

    Used for MedMNIST ``.npz`` files, whose images are stored decoded.

    Raises:
        DataError: ``channels`` or ``image_size`` is not a valid setting, or the result
            would not fit in the memory available.
    """
    check_decode_settings(image_size, channels)
    start = time.perf_counter()
    c_in = images.shape[-1]
    c = channels or c_in
    out_h, out_w = (image_size, image_size) if image_size else images.shape[1:3]
    check_decoded_size(len(images), out_h, out_w, c, image_size)
    if c == 3 and c_in == 1:
        images = np.repeat(images, 3, axis=-1)
    elif c == 1 and c_in == 3:  # Pillow's "L" conversion, so files and arrays agree
        rgb = images.astype(np.uint32)
        images = ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16)
        images = images.astype(np.uint8)[..., None]
    if image_size and images.shape[1:3] != (image_size, image_size):
        src = images
        images = np.empty((len(src), image_size, image_size, c), np.uint8)

        def resize(i: int) -> None:
            pil = Image.fromarray(src[i, ..., 0] if c == 1 else src[i])
            resized = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
            images[i] = resized.reshape(image_size, image_size, c)

        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            list(pool.map(resize, range(len(src)), chunksize=256))
    drop = blank.mask(images) if blank is not None else np.zeros(len(images), bool)
    kept = np.flatnonzero(~drop).astype(np.int64)
    images = np.ascontiguousarray(images if len(kept) == len(images) else images[kept])
    return Decoded(images, kept, {}, np.flatnonzero(drop).tolist(), time.perf_counter() - start)


def _decode_one(data: bytes, channels: int, size: int | None,
                window: tuple[float, float] | None = None) -> tuple[np.ndarray, bool]:
    """Decode one encoded image (or DICOM file) to ``(H, W, channels)`` uint8; also says if it was grayscale."""
    with open_image(data, window) as image:
        gray = image.mode in GRAY_MODES
        if size and image.format == "JPEG":
            image.draft(image.mode, (size, size))  # DCT-domain downscale: much faster, same look
        image = _to_8bit(image, channels)
        if size and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image)
    return array.reshape(array.shape[0], array.shape[1], channels), gray


def _to_8bit(image: Image.Image, channels: int) -> Image.Image:
    """Convert to "L" or "RGB". 16-bit and float images are min-max scaled per image,
    because clipping them to 0..255 (Pillow's default) turns most of them white."""
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def _probe(read: Callable[[int], bytes], n: int, size: int | None) -> tuple[int | None, bool, tuple[int, int]]:
    """First decodable image: its index, whether it is grayscale, and its (H, W)."""
    for i in range(n):
        try:
            with open_image(read(i)) as image:
                image.load()
                return i, image.mode in GRAY_MODES, (image.height, image.width)
        except Exception:  # noqa: BLE001 - unreadable files are counted by the main pass
            continue
    return None, False, (0, 0)


def _reason(read: Callable[[int], bytes], i: int) -> str:
    try:
        with open_image(read(i)) as image:
            image.load()
        return "unknown"
    except Exception as exc:  # noqa: BLE001
        return _describe(exc)


def _describe(exc: Exception) -> str:
    """A short reason for the skip summary (no object reprs, no repeated paths)."""
    if isinstance(exc, (FileNotFoundError, KeyError)):
        return "missing"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow can read"
    if isinstance(exc, DicomError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _size_error(read: Callable[[int], bytes], paths: Sequence[str], found: int, probe: int,
                probe_hw: tuple[int, int]) -> DataError:
    """Name the first image (in input order) whose size differs from the first image's."""
    first, first_hw = found, None
    for i in range(found + 1):  # header reads only: cheap
        try:
            with open_image(read(i)) as image:
                hw = (image.height, image.width)
        except Exception:  # noqa: BLE001
            continue
        if hw != probe_hw:
            first, first_hw = i, hw
            break
    if first_hw is None:
        with open_image(read(found)) as image:
            first_hw = (image.height, image.width)
    (h, w), (h0, w0) = first_hw, probe_hw
    return DataError(f"images differ in size: {paths[first]} is {w}x{h} but {paths[probe]} is {w0}x{h0}; "
                     f"set `image_size` (e.g. image_size: {max(h0, w0)}) to decode every image to one "
                     "square size")


def _compact(out: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Move the kept rows to the front in place (no second full-size copy) and cut."""
    if len(kept) == len(out):
        return out
    for dst, src in enumerate(kept.tolist()):
        if dst != src:
            out[dst] = out[src]
    return out[: len(kept)]


__all__ = ["DECODER_VERSION", "BlankRule", "Decoded", "decode_files", "convert_arrays", "default_workers",
           "available_memory", "check_decode_settings", "check_decoded_size"]
