"""Downloaded files that pass a format check but would still do harm: masks that are not class
indices, images and lists that are small on disk but large once read, zips whose directory alone
is large (docs/data.md#untrusted-files).

Each crafted file is built here and read in its own process (``tests/helpers/read_untrusted.py``)
under the budget of tests/test_untrusted.py: exit 2 with one ``error:`` line, within 10 s and
300 MiB of the same command given a junk file.
"""
import io
import re
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets.lists import MAX_LIST_IDS, read_list
from datasets.readers import MAX_DATASET_PIXELS, read_image, read_mask
from utils.errors import UserError
from utils.safe_io import zip_directory_entries

from tests.test_untrusted import junk, refused_reading  # noqa: F401  (junk is a fixture)


# ---------------------------------------------------------------- crafting PNG and JPEG files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, colour: int, row: bytes = None,
              palette: bytes = None) -> bytes:
    """A PNG written by hand (so any bit depth / colour type), every row equal to ``row`` (zeros
    by default), compressed as it streams (an 8192 x 8192 file is tens of KB)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = row if row is not None else bytes((width * channels * depth + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\x00" + row) for _ in range(height)) + z.flush()
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if colour == 3:
        out += _chunk(b"PLTE", palette or bytes(range(48)))
    return out + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def many_scan_jpeg(scans: int, size=(1000, 1000)) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` start-of-scan markers."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    segment = data[last:-2]                       # the last scan, up to the end-of-image marker
    have = data.count(b"\xff\xda")
    return data[:-2] + segment * (scans - have) + b"\xff\xd9"


# ---------------------------------------------------------------- masks are class indices
def test_a_jpeg_named_png_is_refused_as_a_mask(tmp_path, junk):  # noqa: F811
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((40, 50), np.uint8), mode="L").save(path, format="JPEG")
    refused_reading("mask", path, junk / "junk.png", tmp_path, "refused mask", str(path), "JPEG")
    with pytest.raises(UserError, match="it is a JPEG file"):
        read_mask(str(path), 21)


@pytest.mark.parametrize("depth,colour,word", [(4, 0, "4-bit greyscale"), (1, 0, "1-bit greyscale"),
                                               (2, 3, "2-bit palette"), (16, 0, "16-bit greyscale"),
                                               (8, 2, "8-bit RGB"), (8, 4, "8-bit greyscale + alpha")])
def test_masks_of_another_bit_depth_or_colour_type_are_refused(tmp_path, depth, colour, word):
    path = tmp_path / "mask.png"
    path.write_bytes(png_bytes(16, 8, depth, colour))
    with pytest.raises(UserError, match=f"refused mask .*mask.png: a {re.escape(word)} PNG"):
        read_mask(str(path), 21)


def test_a_4_bit_mask_would_be_read_scaled_so_it_is_refused_not_misread(tmp_path):
    """The case that scored wrong silently: Pillow reads a 4-bit greyscale PNG scaled by 17, so
    index 1 (aeroplane) came back as 17 (sheep)."""
    path = tmp_path / "mask.png"
    path.write_bytes(png_bytes(2, 1, 4, 0, row=bytes([0x11])))      # two pixels of index 1
    assert np.array(Image.open(path)).tolist() == [[17, 17]]       # what a plain reader sees
    with pytest.raises(UserError, match="4-bit greyscale"):
        read_mask(str(path), 21)


def test_8_bit_greyscale_and_palette_masks_still_read_as_indices(tmp_path):
    path = tmp_path / "l.png"
    path.write_bytes(png_bytes(3, 2, 8, 0, row=bytes([0, 1, 255])))
    assert read_mask(str(path), 21).tolist() == [[0, 1, 255]] * 2
    path = tmp_path / "p.png"
    path.write_bytes(png_bytes(3, 2, 8, 3, row=bytes([0, 15, 255]), palette=bytes(768)))
    assert read_mask(str(path), 21).tolist() == [[0, 15, 255]] * 2


def test_a_mask_value_outside_the_classes_is_named(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(png_bytes(3, 1, 8, 0, row=bytes([0, 21, 200])))
    with pytest.raises(UserError, match=r"m.png holds values \[21, 200\] outside the class range 0..20"):
        read_mask(str(path), 21)


# ---------------------------------------------------------------- images: pixels and scans
@pytest.mark.parametrize("side", [8192, 2048])
def test_a_small_png_declaring_many_pixels_is_refused_before_decoding(tmp_path, junk, side):  # noqa: F811
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(side, side, 8, 2))
    assert os.path.getsize(path) < 200_000 and side * side > MAX_DATASET_PIXELS
    refused_reading("image", path, junk / "junk.png", tmp_path, "refused image", f"{side}x{side}",
                    "dataset image")


def test_the_largest_admitted_dataset_image_reads(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes(2048, 1024, 8, 2))
    assert read_image(str(path)).shape == (1024, 2048, 3)
    path.write_bytes(png_bytes(2048, 1025, 8, 2))
    with pytest.raises(UserError, match="2048x1025 pixels"):
        read_image(str(path))


def test_a_jpeg_of_50000_scans_is_refused_before_decoding(tmp_path, junk):  # noqa: F811
    path = tmp_path / "scans.jpg"
    path.write_bytes(many_scan_jpeg(50_000))
    assert os.path.getsize(path) < 2 << 20
    refused_reading("image", path, junk / "junk.jpg", tmp_path, "refused image", "50000 scans")


def test_an_ordinary_progressive_jpeg_reads(tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)).save(
        path, "JPEG", progressive=True)
    assert read_image(str(path)).shape == (64, 80, 3)


# ---------------------------------------------------------------- lists
def test_a_list_larger_than_the_list_budget_is_refused_by_its_size(tmp_path, junk):  # noqa: F811
    path = tmp_path / "val.txt"
    with open(path, "wb") as f:
        f.write(b"a\n" * (32 << 20))                       # 64 MiB of one-letter ids
    refused_reading("list", path, junk / "junk.txt", tmp_path, "refused split list", "MiB")


def test_a_list_of_too_many_ids_is_refused_while_it_is_read(tmp_path, junk):  # noqa: F811
    path = tmp_path / "val.txt"
    with open(path, "wb") as f:
        f.write(b"a\n" * (MAX_LIST_IDS + 1))
    refused_reading("list", path, junk / "junk.txt", tmp_path, "refused split list", f"more than {MAX_LIST_IDS} ids")


def test_an_overlong_line_is_refused_without_holding_it(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("2007_000032\n" + "x" * 10_000 + "\n")
    with pytest.raises(UserError, match="line 2 is longer than"):
        read_list(str(path))
    path.write_text("2007_000032 1\n\n2007_000033")
    assert read_list(str(path)) == ["2007_000032", "2007_000033"]


# ---------------------------------------------------------------- zips: the directory counts
def directory_only_zip(path, entries: int) -> None:
    """A zip of ``entries`` central-directory records (empty names' worth of bytes) and no data."""
    record = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
                         0, 0, 0, 0) + b"a"
    with open(path, "wb") as f:
        chunk = record * 10_000
        for _ in range(entries // 10_000):
            f.write(chunk)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, len(record) * entries, 0, 0))


def test_a_zip_of_two_million_directory_records_is_refused_as_a_checkpoint(tmp_path, junk):  # noqa: F811
    path = tmp_path / "many.pth"
    directory_only_zip(path, 2_000_000)
    assert zip_directory_entries(str(path)) >= 2_000_000
    refused_reading("checkpoint", path, junk / "junk.pth", tmp_path, "refused checkpoint", "records")


def test_a_zip_of_two_million_directory_records_is_refused_as_labels(tmp_path, junk):  # noqa: F811
    lists = tmp_path / "lists"
    lists.mkdir()
    directory_only_zip(lists / "cls_labels.npz", 2_000_000)
    refused_reading("labels", lists, junk / "lists", tmp_path, "refused image-level labels", "records")


def test_the_directory_count_of_real_zips(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        for i in range(300):
            z.writestr(f"name{i}", b"x")
    assert 300 <= zip_directory_entries(str(tmp_path / "z.zip")) <= 600
    (tmp_path / "not.zip").write_bytes(b"plain text")
    assert zip_directory_entries(str(tmp_path / "not.zip")) is None


# ---------------------------------------------------------------- pickles: what loading builds
def test_a_checkpoint_pickle_of_millions_of_empty_lists_is_refused(tmp_path, junk):  # noqa: F811
    from tests.test_untrusted import torch_zip
    path = tmp_path / "lists.pth"
    torch_zip(path, b"]" * (6 << 20))          # one empty list per byte: the scanner kept them all
    refused_reading("checkpoint", path, junk / "junk.pth", tmp_path, "refused checkpoint", "builds more than")


def test_a_labels_pickle_of_millions_of_empty_sets_is_refused(tmp_path, junk):  # noqa: F811
    from tests.test_untrusted import labels_npy
    lists = tmp_path / "lists"
    lists.mkdir()
    labels_npy(lists / "cls_labels_onehot.npy", b"\x8f" * (4 << 20))   # EMPTY_SET x 4 Mi
    refused_reading("labels", lists, junk / "lists", tmp_path, "refused image-level labels", "builds more than")


def test_real_pickles_stay_within_what_they_may_build(tmp_path):
    import pickle
    from datasets.lists import load_labels
    from utils.pickle_scan import check_pickle_memo
    labels = {f"2008_{i:06d}": np.eye(80, dtype=np.float64)[i % 80] for i in range(3000)}
    for protocol in (2, 3, 4):
        check_pickle_memo(pickle.dumps(np.array(labels, dtype=object), protocol=protocol))
    lists = tmp_path / "lists"
    lists.mkdir()
    np.save(lists / "cls_labels_onehot.npy", np.array(labels, dtype=object), allow_pickle=True)
    assert len(load_labels(str(lists))) == 3000


# ---------------------------------------------------------------- --pretrained_path weight files
def test_a_safetensors_header_of_a_million_empty_tensors_is_refused(tmp_path, junk):  # noqa: F811
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(1_000_000))
    header = ("{" + entries + "}").encode()
    path = tmp_path / "weights.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    refused_reading("pretrained", path, junk / "junk.pth", tmp_path, "--pretrained_path", "header")


def test_a_safetensors_header_listing_too_many_tensors_is_refused(tmp_path):
    from utils.safe_io import MAX_WEIGHT_TENSORS, check_safetensors
    entries = ",".join(f'"{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(MAX_WEIGHT_TENSORS + 1))
    header = ("{" + entries + "}").encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(UserError, match=f"lists {MAX_WEIGHT_TENSORS + 1} tensors"):
        check_safetensors(str(path), "--pretrained_path")


@pytest.mark.parametrize("kernel", [160, 256])
def test_an_npz_whose_patch_kernel_is_not_the_models_is_refused_before_timm_resamples_it(tmp_path, junk, kernel):  # noqa: F811
    path = tmp_path / "weights.npz"
    np.savez(path, **{"embedding/kernel": np.zeros((kernel, kernel, 3, 1), np.float32),
                      "embedding/bias": np.zeros(1, np.float32)})
    assert os.path.getsize(path) < 800_000
    refused_reading("pretrained", path, junk / "junk.pth", tmp_path, "--pretrained_path", "patch kernel")


# ---------------------------------------------------------------- refused before, kept so
@pytest.mark.parametrize("kind,name", [("image", "x.jpg"), ("mask", "x.png"), ("list", "val.txt"),
                                       ("checkpoint", "c.pth"), ("labels", "lists")])
def test_a_fifo_in_place_of_a_file_is_one_line_and_never_blocks(tmp_path, junk, kind, name):  # noqa: F811
    if kind == "labels":
        (tmp_path / name).mkdir()
        os.mkfifo(tmp_path / name / "cls_labels.npz")
        junk_path = junk / "lists"
    else:
        os.mkfifo(tmp_path / name)
        junk_path = junk / {"image": "junk.jpg", "mask": "junk.png", "list": "junk.txt", "checkpoint": "junk.pth"}[kind]
    refused_reading(kind, tmp_path / name, junk_path, tmp_path, str(tmp_path / name))


@pytest.mark.parametrize("kind", ["image", "checkpoint"])
def test_a_link_to_a_device_is_one_line(tmp_path, junk, kind):  # noqa: F811
    path = tmp_path / ("x.jpg" if kind == "image" else "c.pth")
    path.symlink_to("/dev/zero")
    refused_reading(kind, path, junk / ("junk.jpg" if kind == "image" else "junk.pth"), tmp_path, str(path))


def test_an_npy_header_of_a_huge_declared_length_is_one_line(tmp_path, junk):  # noqa: F811
    import zipfile
    lists = tmp_path / "lists"
    lists.mkdir()
    npy = b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 31) + b" " * 64
    with zipfile.ZipFile(lists / "cls_labels.npz", "w") as z:
        z.writestr("labels.npy", npy)
        z.writestr("names.npy", npy)
    refused_reading("labels", lists, junk / "lists", tmp_path, "image-level labels")


@pytest.mark.parametrize("chunk", [b"zTXt", b"iCCP"])
def test_a_png_whose_compressed_chunk_inflates_to_gigabytes_is_one_line(tmp_path, junk, chunk):  # noqa: F811
    body = b"k\x00\x00" + zlib.compress(bytes(256 << 20), 9)          # 256 MiB of zeros, ~256 KB
    data = png_bytes(16, 16, 8, 2)
    path = tmp_path / "bomb.png"
    path.write_bytes(data[:33] + _chunk(chunk, body) + data[33:])
    refused_reading("image", path, junk / "junk.png", tmp_path, str(path))


def test_a_cmyk_jpeg_mask_is_one_line(tmp_path, junk):  # noqa: F811
    path = tmp_path / "cmyk.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("CMYK").save(path, format="JPEG")
    refused_reading("mask", path, junk / "junk.png", tmp_path, "refused mask", "JPEG")
