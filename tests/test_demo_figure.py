"""The demo's picture (engine/demo_figure.py) and the legend and letterbox helpers."""
import numpy as np
import torch

from datasets.classes import VOC_DISPLAY_NAMES, voc_colormap
from utils.labels import IGNORE_INDEX
from datasets.layout import voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset
from model.network import DualStudentNet
from engine.demo_figure import COLUMNS, demo_figure, pick_images
from engine.visualize import legend, letterbox


def _val(voc_copy, tmp_path):
    layout = voc_layout(str(voc_copy))
    lists = ensure_lists(layout, str(tmp_path / "lists"), ["val"])
    return EvalDataset(layout, lists, "val")


def test_picked_images_are_colour_images_with_objects_covering_many_classes(voc_copy, tmp_path):
    val = _val(voc_copy, tmp_path)
    picked = pick_images(val, 4)
    assert 1 <= len(picked) <= 4 and picked == sorted(set(picked))
    classes = set()
    for i in picked:
        assert val[i][3].sum() > 0
        rgb = val.raw_image(i)
        assert not (rgb == rgb[..., :1]).all()
        classes |= set(torch.nonzero(val[i][3]).flatten().tolist())
    # greedy choice: the first pick alone never covers more classes than all picks together
    assert len(classes) >= int(val[picked[0]][3].sum())


def test_figure_has_one_row_per_image_six_columns_and_a_legend(voc_copy, tmp_path):
    val = _val(voc_copy, tmp_path)
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21, pretrained=False)
    tile = 64
    fig = demo_figure(net, val, VOC_DISPLAY_NAMES, torch.device("cpu"), crop_size=48, max_images=3, tile=tile)
    rows = len(pick_images(val, 3))
    assert fig.dtype == np.uint8 and fig.shape[1] == len(COLUMNS) * tile
    assert fig.shape[0] > 18 + rows * tile     # header, the rows, then the legend
    assert net.training                         # left as it was found
    # the ground-truth column shows VOC colours of the mask classes
    cmap = voc_colormap()
    gt_col = fig[18:18 + rows * tile, 5 * tile:6 * tile].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(gt_col, axis=0)}
    assert tuple(cmap[0]) in colours and tuple(cmap[IGNORE_INDEX]) in colours


def test_legend_wraps_entries_and_paints_each_swatch():
    entries = [(i, VOC_DISPLAY_NAMES[i]) for i in range(21)] + [(IGNORE_INDEX, "ignore")]
    strip = legend(entries, 300)
    assert strip.shape[1] == 300 and strip.shape[0] > 2 * 20     # several rows
    cmap = voc_colormap()
    present = {tuple(c) for c in strip.reshape(-1, 3)}
    for idx, _ in entries:
        assert tuple(cmap[idx]) in present
    assert legend(entries[:2], 300).shape[0] < strip.shape[0]


def test_letterbox_keeps_the_aspect_ratio_and_centres_the_tile():
    tile = np.zeros((50, 100, 3), np.uint8)
    out = letterbox(tile, 80)
    assert out.shape == (80, 80, 3)
    assert (out[:20] == 255).all() and (out[60:] == 255).all() and (out[20:60] == 0).all()
