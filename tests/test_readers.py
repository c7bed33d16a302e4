"""Images always load as RGB, masks always as class indices, bad files as one-line user errors."""
import numpy as np
import pytest
from PIL import Image

from datasets.classes import voc_colormap
from datasets.readers import read_image, read_mask
from utils.errors import UserError


def _mask_values():
    m = np.zeros((20, 30), dtype=np.uint8)
    m[2:8, 3:9] = 15
    m[10:15, 10:25] = 1
    m[9, :] = 255
    return m


def test_palette_mask_reads_as_indices_not_colours(tmp_path):
    m = _mask_values()
    img = Image.fromarray(m, mode="P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_mask(str(tmp_path / "p.png"), 21)
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, m)


def test_single_channel_mask_reads_as_indices(tmp_path):
    m = _mask_values()
    Image.fromarray(m, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "l.png"), 21), m)


def test_rgb_mask_is_refused_with_its_path(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="rgb.png.*RGB"):
        read_mask(str(tmp_path / "rgb.png"), 21)


def test_mask_value_outside_class_range_is_refused(tmp_path):
    m = _mask_values()
    m[0, 0] = 40
    Image.fromarray(m, mode="L").save(tmp_path / "bad.png")
    with pytest.raises(UserError, match=r"bad.png.*\[40\].*0\.\.20"):
        read_mask(str(tmp_path / "bad.png"), 21)
    assert read_mask(str(tmp_path / "bad.png"), 81)[0, 0] == 40


def test_grayscale_jpeg_loads_as_three_equal_channels(tmp_path):
    g = (np.arange(24 * 32) % 256).astype(np.uint8).reshape(24, 32)
    Image.fromarray(g, mode="L").save(tmp_path / "g.jpg")
    out = read_image(str(tmp_path / "g.jpg"))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("mode,ext", [("RGBA", "png"), ("CMYK", "jpg"), ("P", "png"), ("RGB", "jpg")])
def test_other_image_modes_load_as_rgb(tmp_path, mode, ext):
    rgb = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    img.save(tmp_path / f"x.{ext}")
    out = read_image(str(tmp_path / f"x.{ext}"))
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8


def test_rgba_drops_alpha_and_keeps_colours(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert (read_image(str(tmp_path / "a.png"))[..., 0] == 200).all()


def test_truncated_image_is_a_user_error(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="t.jpg.*corrupt or truncated"):
        read_image(str(tmp_path / "t.jpg"))


def test_missing_and_non_image_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="nope.jpg does not exist"):
        read_image(str(tmp_path / "nope.jpg"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="text.png"):
        read_mask(str(tmp_path / "text.png"), 21)
