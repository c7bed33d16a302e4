"""Reading images and label masks the way every loader of the project does.

Images always come back as RGB uint8 ``(H, W, 3)``: grayscale, RGBA, CMYK and palette images are
converted. Label masks always come back as class indices ``(H, W)`` uint8: single-channel masks
(SBD ``SegmentationClassAug``, COCO conversions) are read as they are and palette PNGs (VOC's own
``SegmentationClass``) as their raw palette indices, never as colours.
"""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError

from .classes import IGNORE_INDEX


# far above any dataset's images (VOC ~500x375, COCO 640x480); a file declaring more is refused
# before its pixels are decoded (a "decompression bomb": a few KB that expand to gigabytes)
MAX_IMAGE_PIXELS = 1 << 26


def check_image_size(img: Image.Image, path: str, what: str = "image",
                     fix: str = "replace it or remove its id from the list") -> None:
    """Refuse an opened (not yet decoded) image whose header declares more than MAX_IMAGE_PIXELS."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise UserError(f"refused {what} {path}: it declares {w}x{h} pixels, more than "
                        f"{MAX_IMAGE_PIXELS >> 20} M (a decompression bomb or not a dataset image); "
                        f"{fix}")


# the formats a dataset holds; nothing else is handed to a decoder (Pillow can identify dozens,
# some through external programs: EPS goes to Ghostscript)
IMAGE_FORMATS = ("JPEG", "PNG")


def _open_header(path: str, what: str, fix: str, formats) -> Image.Image:
    """Open ``path`` reading its header only, as one of ``formats``, and check its declared size."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist; check the dataset folder and the list file")
    try:
        img = Image.open(path, formats=list(formats))
    except Image.DecompressionBombError:
        raise UserError(f"refused {what} {path}: it declares more pixels than PIL's limit (a "
                        f"decompression bomb or not a dataset image); {fix}") from None
    except UnidentifiedImageError:
        raise UserError(f"refused {what} {path}: it is not a {' or '.join(formats)} file (only "
                        f"those formats are decoded); {fix}") from None
    except Exception as exc:   # any decoder failure is the file's
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {str(exc)[:120]}); the "
                        f"file is corrupt or truncated: {fix}") from None
    try:
        check_image_size(img, path, what, fix)
    except UserError:
        img.close()
        raise
    return img


def image_size(path: str, what: str = "image", fix: str = "replace it or remove its id from the list",
               formats=IMAGE_FORMATS):
    """``(width, height)`` of a JPEG/PNG file from its header, without decoding its pixels."""
    with _open_header(path, what, fix, formats) as img:
        return img.size


def open_image(path: str, what: str, fix: str = "replace it or remove its id from the list",
               formats=IMAGE_FORMATS) -> Image.Image:
    """Open and decode ``path`` as one of ``formats`` (JPEG and PNG: what datasets hold) after
    checking its declared size; a missing, oversized, corrupt, truncated or other-format file is a
    one-line :class:`UserError` naming ``what``, the path and ``fix``."""
    img = _open_header(path, what, fix, formats)
    try:
        img.load()
    except Image.DecompressionBombError:
        raise UserError(f"refused {what} {path}: it declares more pixels than PIL's limit (a "
                        f"decompression bomb or not a dataset image); {fix}") from None
    except Exception as exc:   # any decoder failure is the file's
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {str(exc)[:120]}); the "
                        f"file is corrupt or truncated: {fix}") from None
    return img


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)`` whatever its mode (L, RGBA, CMYK, P, I;16)."""
    img = open_image(path, "image")
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / max(arr.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L is replicated, RGBA drops alpha, CMYK and P are converted
    return np.asarray(img, dtype=np.uint8).copy()


def read_mask(path: str, num_classes: int) -> np.ndarray:
    """Read a label PNG as class indices ``(H, W)`` uint8 (0..num_classes-1, 255 = ignore).

    Single-channel and palette PNGs are both read as indices. Any other value is a user error.
    """
    img = open_image(path, "mask")
    if img.mode in ("P", "L"):
        mask = np.array(img, dtype=np.uint8)
    elif img.mode in ("I", "I;16", "I;16B", "I;16L"):
        mask = np.asarray(img)
        if mask.min() < 0 or mask.max() > 255:
            raise UserError(f"mask {path} has values outside 0..255; expected class indices "
                            f"0..{num_classes - 1} and {IGNORE_INDEX}")
        mask = mask.astype(np.uint8)
    else:
        raise UserError(f"mask {path} is a {img.mode} image; expected a single-channel or palette "
                        "PNG of class indices (not a colour rendering)")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))[:5]
        raise UserError(f"mask {path} holds values {values} outside the class range "
                        f"0..{num_classes - 1} (and {IGNORE_INDEX} = ignore); wrong dataset or "
                        "--num_classes?")
    return mask
