"""DICOM files as 8-bit images, the way a radiologist's viewer shows them.

A DICOM file (recognised by the ``DICM`` marker after its 128-byte preamble, whatever its
name) is read with pydicom and turned into a Pillow image that the rest of the decoder
treats like any PNG:

1. the modality LUT: stored values times ``RescaleSlope`` plus ``RescaleIntercept``
   (Hounsfield units for CT);
2. a window: ``data.window: [centre, width]`` when set, else the file's first
   ``WindowCenter``/``WindowWidth``, else the image's own min-max; values from
   ``centre - width/2`` to ``centre + width/2`` map to 0..255, the rest is clipped;
3. ``MONOCHROME1`` (white = low values) is inverted, so bone is white in every image;
4. colour (``RGB``, ``YBR_*``: pydicom converts to RGB; ``PALETTE COLOR``: its lookup
   table) stays 8-bit RGB.

Files one image per file can hold are refused per file and counted with the unreadable
images, like a corrupt JPEG: multi-frame files (a CT series stored as one file, an
ultrasound clip), files without pixel data (structured reports, RT structures), and
compressed pixel data with no codec installed (JPEG-LS, for instance, needs
``pyjpegls`` or ``python-gdcm``). Only the image tags are used (pixels, rescale, window,
photometric interpretation, frame count; the modality in a skip reason): patient names
and ids are never read into a message or a log.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DICOM_MARKER = b"DICM"
MARKER_OFFSET = 128


class DicomError(ValueError):
    """A DICOM file that is not one image medtune can read (the message says why)."""


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return data[MARKER_OFFSET:MARKER_OFFSET + len(DICOM_MARKER)] == DICOM_MARKER


def _window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    low = centre - width / 2.0
    return np.clip((values - low) * (255.0 / width), 0.0, 255.0)


def _first(value: object) -> float:
    """The first of a multi-valued tag (``WindowCenter`` may list several windows)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]


def dicom_image(data: bytes, window: tuple[float, float] | None = None) -> Image.Image:
    """The DICOM file ``data`` as a Pillow ``L`` (grayscale) or ``RGB`` image.

    Raises:
        DicomError: multi-frame, no pixel data, or pixel data pydicom cannot decode here.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise DicomError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in dataset:
        raise DicomError(f"DICOM file without pixel data (modality {dataset.get('Modality', 'unknown')})")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): medtune reads one image per file; store each "
                         "frame (slice) as its own file")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - a missing codec is a RuntimeError, damaged data a ValueError
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        why = " ".join(str(exc).split())  # pydicom's codec messages span lines
        raise DicomError(f"DICOM pixel data ({name}) cannot be decoded here ({type(exc).__name__}: {why})") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        rgb = rgb / 257.0 if rgb.dtype == np.uint16 else rgb  # 16-bit palette entries
        return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    if pixels.ndim == 3:  # RGB (pydicom converts YBR to RGB)
        if pixels.dtype != np.uint8:
            top = float(pixels.max()) or 1.0
            pixels = np.rint(pixels.astype(np.float64) * (255.0 / top))
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    if window is None and "WindowCenter" in dataset and "WindowWidth" in dataset:
        window = (_first(dataset.WindowCenter), _first(dataset.WindowWidth))
    if window is not None and window[1] > 0:
        scaled = _window(values, float(window[0]), float(window[1]))
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def open_image(data: bytes, window: tuple[float, float] | None = None) -> Image.Image:
    """``data`` as a Pillow image: DICOM through :func:`dicom_image`, anything else through Pillow."""
    return dicom_image(data, window) if is_dicom(data) else Image.open(io.BytesIO(data))


__all__ = ["DicomError", "dicom_image", "is_dicom", "open_image"]
