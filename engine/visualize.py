"""Image grids for TensorBoard and the visualisation tools: CAM heat-maps and label colours."""
import numpy as np
import torch
from PIL import Image

from datasets.classes import voc_colormap
from utils.input_stats import InputStats

_CMAP = torch.from_numpy(voc_colormap()).float() / 255.0
_PALETTE = voc_colormap().reshape(-1).tolist()


def label_image(label: np.ndarray, palette: bool = False) -> Image.Image:
    """``(H, W)`` class indices -> a single-channel PNG image, or with ``palette`` a mode "P" image
    carrying the VOC colormap (same indices, shown in colour)."""
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P" if palette else "L")
    if palette:
        img.putpalette(_PALETTE)
    return img


def colorize_label(label: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` class indices -> ``(3, H, W)`` RGB in [0, 1] with the VOC palette."""
    return _CMAP.to(label.device)[label.long().clamp(0, 255)].permute(2, 0, 1)


def heatmap(cam: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` in [0, 1] -> ``(3, H, W)`` jet-like colours."""
    c = cam.clamp(0, 1)
    r = (1.5 - (4 * c - 3).abs()).clamp(0, 1)
    g = (1.5 - (4 * c - 2).abs()).clamp(0, 1)
    b = (1.5 - (4 * c - 1).abs()).clamp(0, 1)
    return torch.stack([r, g, b])


def cam_overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a ``(H, W)`` CAM heat-map over an RGB ``(3, H, W)`` image in [0, 1]."""
    return (1 - alpha) * image + alpha * heatmap(cam)


@torch.no_grad()
def training_grid(images: torch.Tensor, cls_label: torch.Tensor, cams, pseudo_labels,
                  stats: InputStats) -> torch.Tensor:
    """First image of the batch ``images (B, 3, H, W)`` (normalised with ``stats``): the image,
    each map of ``cams`` (``(B, K, H, W)`` each, max over the classes present in ``cls_label
    (B, K)``) and each of ``pseudo_labels`` (``(B, H, W)`` each, or None), side by side:
    ``(3, H, n*W)``."""
    rgb = stats.denormalize(images[:1].float())[0].cpu()
    tiles = [rgb]
    present = cls_label[0] > 0
    for cam in cams:
        m = cam[0][present].amax(0) if present.any() else cam[0].amax(0)
        tiles.append(cam_overlay(rgb, m.float().cpu()))
    if pseudo_labels is not None:
        tiles += [colorize_label(label[0].cpu()) for label in pseudo_labels]
    return torch.cat(tiles, dim=2)


def log_training_images(writer, grid: torch.Tensor, step: int) -> None:
    """Write a :func:`training_grid` to tensorboard."""
    writer.add_image("train/image_cams_labels", grid, step)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    """A copy of the ``(H, W, 3)`` uint8 ``tile`` with ``text`` written in its top-left corner
    (PIL's default font, white on a black box)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(tile))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(img).copy()


def tile_grid(rows, fill: int = 255) -> np.ndarray:
    """Rows of equally sized ``(H, W, 3)`` uint8 tiles -> one ``(len(rows) H, n W, 3)`` image,
    ``n`` the longest row; shorter rows are padded with ``fill``."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * h, cols * w, 3), fill, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = tile
    return grid


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) image + alpha overlay`` of two ``(H, W, 3)`` uint8 images, rounded."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * overlay.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def letterbox(tile: np.ndarray, size: int, fill: int = 255, nearest: bool = False) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)``: resized to fit (aspect kept) and centred on
    ``fill``; ``nearest`` for label maps."""
    h, w = tile.shape[:2]
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    small = np.asarray(Image.fromarray(np.ascontiguousarray(tile)).resize((nw, nh), resample))
    out = np.full((size, size, 3), fill, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def legend(entries, width: int, swatch: int = 12) -> np.ndarray:
    """A white ``(h, width, 3)`` uint8 strip with a colour swatch and a name per
    ``(class index, name)`` entry (VOC palette; 255 is the ignore colour), wrapped over rows."""
    from PIL import ImageDraw

    cmap = voc_colormap()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = [(idx, name, swatch + 6 + int(probe.textlength(name)) + 14) for idx, name in entries]
    rows, row, used = [], [], 0
    for cell in cells:
        if row and used + cell[2] > width - 8:
            rows.append(row)
            row, used = [], 0
        row.append(cell)
        used += cell[2]
    rows.append(row)
    line = swatch + 8
    img = Image.new("RGB", (width, 8 + line * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, cells_in_row in enumerate(rows):
        x, y = 8, 4 + r * line
        for idx, name, cell_w in cells_in_row:
            draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in cmap[idx]),
                           outline=(0, 0, 0))
            draw.text((x + swatch + 6, y), name, fill=(0, 0, 0))
            x += cell_w
    return np.asarray(img).copy()
