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

from utils.labels import IGNORE_INDEX


# far above any image a decoder is handed (a file declaring more is refused before its pixels are
# decoded: a "decompression bomb" of a few KB can expand to gigabytes)
MAX_IMAGE_PIXELS = 1 << 26
# a dataset image (and its mask): 2 M pixels (2048 x 1024), 5x COCO's largest (640 x 640) and 11x
# VOC's (500 x 375); its multi-scale evaluation fits the budget in docs/data.md#untrusted-files
MAX_DATASET_PIXELS = 1 << 21
# a progressive JPEG has about ten scans; each scan is one more pass over all coefficients
MAX_JPEG_SCANS = 100
MAX_JPEG_BYTES = 64 << 20


def check_image_size(img: Image.Image, path: str, what: str = "image",
                     fix: str = "replace it or remove its id from the list",
                     max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an opened (not yet decoded) image whose header declares more than ``max_pixels``."""
    w, h = img.size
    if w * h > max_pixels:
        limit = f"{max_pixels / (1 << 20):g} M"
        raise UserError(f"refused {what} {path}: it declares {w}x{h} pixels, more than the {limit} "
                        f"{'a dataset image may hold' if max_pixels <= MAX_DATASET_PIXELS else 'this reader decodes'} "
                        f"(a decompression bomb or not a dataset image); {fix}")


def check_jpeg_scans(path: str, what: str, fix: str) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS scans (start-of-scan markers), counted before
    decoding: each scan of a progressive JPEG is a pass over every coefficient of the image."""
    if os.path.getsize(path) > MAX_JPEG_BYTES:
        raise UserError(f"refused {what} {path}: {os.path.getsize(path) >> 20} MiB, more than a "
                        f"dataset JPEG holds; {fix}")
    with open(path, "rb") as f:
        data = f.read()
    # inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so each
    # 0xFF 0xDA is a start of scan (or one of an embedded thumbnail: counted too)
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise UserError(f"refused {what} {path}: a JPEG of {scans} scans, more than the "
                        f"{MAX_JPEG_SCANS} any camera or encoder writes (each scan is a pass over "
                        f"the whole image); {fix}")


# the formats a dataset holds; nothing else is handed to a decoder (Pillow can identify dozens,
# some through external programs: EPS goes to Ghostscript)
IMAGE_FORMATS = ("JPEG", "PNG")


def _open_header(path: str, what: str, fix: str, formats, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` reading its header only, as one of ``formats``, and check its declared size
    (and a JPEG's scan count)."""
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
        check_image_size(img, path, what, fix, max_pixels)
        if img.format in ("JPEG", "MPO"):
            check_jpeg_scans(path, what, fix)
    except UserError:
        img.close()
        raise
    return img


def image_size(path: str, what: str = "image", fix: str = "replace it or remove its id from the list",
               formats=IMAGE_FORMATS, max_pixels: int = MAX_IMAGE_PIXELS):
    """``(width, height)`` of a JPEG/PNG file from its header, without decoding its pixels."""
    with _open_header(path, what, fix, formats, max_pixels) as img:
        return img.size


def open_image(path: str, what: str, fix: str = "replace it or remove its id from the list",
               formats=IMAGE_FORMATS, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and decode ``path`` as one of ``formats`` (JPEG and PNG: what datasets hold) after
    checking its declared size; a missing, oversized, corrupt, truncated or other-format file is a
    one-line :class:`UserError` naming ``what``, the path and ``fix``."""
    img = _open_header(path, what, fix, formats, max_pixels)
    try:
        img.load()
    except Image.DecompressionBombError:
        raise UserError(f"refused {what} {path}: it declares more pixels than PIL's limit (a "
                        f"decompression bomb or not a dataset image); {fix}") from None
    except Exception as exc:   # any decoder failure is the file's
        raise UserError(f"cannot read {what} {path} ({type(exc).__name__}: {str(exc)[:120]}); the "
                        f"file is corrupt or truncated: {fix}") from None
    return img


def read_image(path: str, max_pixels: int = MAX_DATASET_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)`` whatever its mode (L, RGBA, CMYK, P, I;16);
    a file declaring more than ``max_pixels`` (a dataset image's budget by default) is refused."""
    img = open_image(path, "image", max_pixels=max_pixels)
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / max(arr.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L is replicated, RGBA drops alpha, CMYK and P are converted
    return np.asarray(img, dtype=np.uint8).copy()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale + alpha", 6: "RGBA"}
MASK_FIX = ("masks are 8-bit greyscale or palette PNGs of class indices (as VOC's SegmentationClass "
            "and SegmentationClassAug); replace it or remove its id from the list")


def check_mask_encoding(path: str) -> None:
    """Refuse a mask file that is not an 8-bit greyscale or palette PNG, from its header: another
    format under a ``.png`` name (a JPEG's values are not class indices), a colour PNG, or a bit
    depth below 8 (a 4-bit greyscale PNG is read scaled: index 1 would become 17) or above."""
    if not os.path.isfile(path):
        raise UserError(f"mask {path} does not exist; check the dataset folder and the list file")
    with open(path, "rb") as f:
        head = f.read(29)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR" or len(head) < 29:
        kind = "a JPEG file" if head[:3] == b"\xff\xd8\xff" else "not a PNG file"
        raise UserError(f"refused mask {path}: it is {kind}; {MASK_FIX}")
    depth, colour = head[24], head[25]
    if colour not in (0, 3) or depth != 8:
        raise UserError(f"refused mask {path}: a {depth}-bit {PNG_COLOUR_TYPES.get(colour, f'type-{colour}')} "
                        f"PNG; {MASK_FIX}")


def read_mask(path: str, num_classes: int) -> np.ndarray:
    """Read a label PNG as class indices ``(H, W)`` uint8 (0..num_classes-1, 255 = ignore).

    Only 8-bit greyscale and palette PNGs are read (palette PNGs as their raw indices, never as
    colours, :func:`check_mask_encoding`); any value outside the classes and the ignore index is
    a one-line error that names the file and the values.
    """
    check_mask_encoding(path)
    img = open_image(path, "mask", fix=MASK_FIX, formats=("PNG",), max_pixels=MAX_DATASET_PIXELS)
    if img.mode not in ("P", "L"):
        raise UserError(f"refused mask {path}: a {img.mode} image; {MASK_FIX}")
    mask = np.array(img, dtype=np.uint8)
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))[:5]
        raise UserError(f"mask {path} holds values {values} outside the class range "
                        f"0..{num_classes - 1} (and {IGNORE_INDEX} = ignore); wrong dataset or "
                        "--num_classes?")
    return mask
