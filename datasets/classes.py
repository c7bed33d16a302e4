"""Class names and colour palettes of PASCAL VOC 2012 and MS COCO 2014 (docs/data.md#pascal-voc-2012--sbd)."""
import numpy as np

# Index order of the VOC masks; the names are those of the <name> elements in Annotations/*.xml.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# Short names used in printed result tables.
VOC_DISPLAY_NAMES = tuple(
    {"background": "bg", "diningtable": "table", "pottedplant": "plant"}.get(n, n) for n in VOC_CLASSES
)

# COCO's 80 categories in their usual order, compacted to 1..80; 0 is background.
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

assert len(VOC_CLASSES) == 21 and len(COCO_CLASSES) == 81


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC bit-interleaved colormap, (n, 3) uint8; entry 255 is (224, 224, 192)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def voc_server_palette() -> np.ndarray:
    """Palette of the VOC test-server PNGs (docs/method.md#evaluation): 21 VOC colours, then grey (i, i, i)."""
    pal = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)
    pal[:21] = voc_colormap(21)
    return pal
