"""infer.py segments a folder of arbitrary images with a checkpoint."""
import numpy as np
import pytest
import torch
from PIL import Image

import infer
from engine.inference import load_model, segment_logits, voc_msc_logits
from model.network import DualStudentNet
from utils.precision import autocast

BACKBONE = ["--backbone", "deit_tiny_patch16_224", "--cpu"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": net.state_dict()}, path)
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (36, 52, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)).save(folder / "odd.JPG")
    (folder / "notes.txt").write_text("not an image")
    return folder


SIZES = {"gray": (40, 48), "rgba": (52, 36), "odd": (61, 37)}


def test_writes_index_colour_and_overlay_pngs_at_the_image_size(tiny_ckpt, image_folder, tmp_path,
                                                                  capsys):
    out = tmp_path / "out"
    infer.main(["--model_path", tiny_ckpt, "--input", str(image_folder), "--out", str(out),
                "--scales", "1.0", "1.5", *BACKBONE])
    printed = capsys.readouterr().out
    assert "skipping" in printed and "notes.txt" in printed
    assert "segmented 3 image(s)" in printed and "skipped 1 non-image file(s)" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{suffix}.png" for n in SIZES for suffix in ("", "_color", "_overlay"))
    for name, size in SIZES.items():
        index = Image.open(out / f"{name}.png")
        color = Image.open(out / f"{name}_color.png")
        overlay = Image.open(out / f"{name}_overlay.png")
        assert index.mode == "L" and color.mode == "P" and overlay.mode == "RGB"
        assert index.size == color.size == overlay.size == size
        values = np.asarray(index)
        assert values.min() >= 0 and values.max() <= 20
        assert np.array_equal(np.asarray(color), values)  # same indices, VOC palette
        assert color.getpalette()[3:6] == [128, 0, 0]


def test_single_branch_amp_explicit_files_sharing_a_stem_and_tiny_images(tiny_ckpt, tmp_path):
    Image.fromarray(np.full((9, 13, 3), 90, dtype=np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(np.full((20, 24, 3), 30, dtype=np.uint8)).save(tmp_path / "tiny.jpg")
    out = tmp_path / "out"
    infer.main(["--model_path", tiny_ckpt, "--input", str(tmp_path / "tiny.png"),
                str(tmp_path / "tiny.jpg"), "--out", str(out), "--branch", "2", "--scales", "1.0",
                "--amp", *BACKBONE])
    assert Image.open(out / "tiny_png.png").size == (13, 9)
    assert Image.open(out / "tiny_jpg_overlay.png").size == (24, 20)


def test_segment_logits_matches_the_chosen_student(tiny_ckpt):
    net = load_model(tiny_ckpt, "deit_tiny_patch16_224", 21, -3, torch.device("cpu"))
    rgb = np.random.default_rng(1).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    one = segment_logits(net, rgb, torch.device("cpu"), "1", (1.0,))
    both = voc_msc_logits(net, net.input_stats.normalize(rgb)[None], (1.0,))
    assert one.shape == (1, 21, 33, 47)
    torch.testing.assert_close(one, both[0])


def test_missing_checkpoint_is_one_line(image_folder, tmp_path, one_line_error):
    err = one_line_error(infer.main, ["--model_path", str(tmp_path / "nope.pth"), "--input",
                                      str(image_folder), "--out", str(tmp_path / "o"), *BACKBONE])
    assert "nope.pth" in err


def test_empty_folder_is_one_line(tiny_ckpt, tmp_path, one_line_error):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    err = one_line_error(infer.main, ["--model_path", tiny_ckpt, "--input", str(tmp_path / "empty"),
                                      "--out", str(tmp_path / "o"), *BACKBONE])
    assert "no .jpg/.jpeg/.png image" in err


def test_an_input_of_only_unreadable_images_is_a_one_line_error_naming_one(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SystemExit) as exc:
        infer.main(["--model_path", tiny_ckpt, "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                    *BACKBONE])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("warning: skipping") and "broken.jpg" in lines[0]   # skipped, named
    assert len(lines) == 2 and lines[1].startswith("error: none of the images") and "broken.jpg" in lines[1]


def test_wrong_backbone_is_one_line(tiny_ckpt, image_folder, tmp_path, one_line_error):
    err = one_line_error(infer.main, ["--model_path", tiny_ckpt, "--input", str(image_folder),
                                      "--out", str(tmp_path / "o"), "--backbone",
                                      "deit_small_patch16_224", "--cpu"])
    assert "backbone" in err


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_amp_is_bfloat16_on_every_device_like_training_and_evaluation(device):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no CUDA here: the context is built, not entered
        ctx = autocast(torch.device(device), True)
    assert ctx.fast_dtype == torch.bfloat16


@pytest.mark.pydensecrf
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_crf_refines_the_prediction_with_either_backend(tiny_ckpt, image_folder, tmp_path, backend):
    from engine.crf import dense_crf
    out = tmp_path / backend
    infer.main(["--model_path", tiny_ckpt, "--input", str(image_folder / "odd.JPG"), "--out", str(out),
                "--scales", "1.0", "--crf", "--crf_backend", backend, *BACKBONE])
    net = load_model(tiny_ckpt, "deit_tiny_patch16_224", 21, -3, torch.device("cpu"))
    rgb = infer.read_input_image(str(image_folder / "odd.JPG"))
    probs = segment_logits(net, rgb, torch.device("cpu"), "ensemble", (1.0,))[0].softmax(0)
    expected = dense_crf(rgb, probs.numpy())
    got = np.array(Image.open(out / "odd.png"))
    assert (got == expected).mean() >= 0.995


def test_torch_crf_batches_and_class_chunks_give_the_labels_of_one_image_at_a_time(tiny_ckpt, image_folder,
                                                                                   tmp_path, capsys):
    base = ["--model_path", tiny_ckpt, "--input", str(image_folder), "--scales", "1.0", "--crf",
            "--crf_backend", "torch", *BACKBONE]
    infer.main(base + ["--out", str(tmp_path / "one")])
    capsys.readouterr()
    infer.main(base + ["--out", str(tmp_path / "batched"), "--crf_batch", "2", "--crf_class_chunk", "7"])
    printed = capsys.readouterr().out
    assert printed.index("gray.jpg") < printed.index("odd.JPG") < printed.index("segmented 3 image(s)")
    for name in SIZES:
        one = np.array(Image.open(tmp_path / "one" / f"{name}.png"))
        batched = np.array(Image.open(tmp_path / "batched" / f"{name}.png"))
        assert (one == batched).mean() >= 0.999, name


def test_bad_crf_batch_values_are_one_line(tiny_ckpt, image_folder, tmp_path, one_line_error):
    base = ["--model_path", tiny_ckpt, "--input", str(image_folder), "--out", str(tmp_path / "o"), "--crf"]
    assert "--crf_batch" in one_line_error(infer.main, base + ["--crf_batch", "0"])
    assert "--crf_class_chunk" in one_line_error(infer.main, base + ["--crf_class_chunk", "-2"])
    assert not (tmp_path / "o").exists()
