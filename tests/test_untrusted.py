"""Downloaded files stay in their box: crafted list folders, labels, checkpoints, ids and images.

Each crafted file is a few hundred bytes (or a small zip) built here. Every refusal must be one
``error:`` line with exit code 2, within ``SECONDS`` of time and ``EXTRA_MIB`` of peak memory above
the same command given a junk file of the same name (so the budget is what the crafted file costs,
not the few seconds of importing torch and timm); no file outside the data, list and work
folders changes, and no program other than Python starts (a fake ``gs`` on PATH would leave a
marker). Peak memory is the largest resident size of the command's processes
(``tests/helpers/peak_rss.py``).
"""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from utils.errors import UserError
from datasets.layout import voc_layout
from datasets.lists import ensure_lists, load_labels, read_list
from utils.errors import Refused
from utils.pickle_scan import check_pickle_memo, check_tree, scan_pickle
from utils.safe_io import check_zip, output_path, write_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, "tests", "helpers")
SECONDS = 10.0
EXTRA_MIB = 300.0


# ---------------------------------------------------------------- running under a budget
def _env(tmp_path):
    """PATH starts with a fake ``gs`` (and friends) that leaves a marker when any is started."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    marker = tmp_path / "ANOTHER_PROGRAM_RAN"
    # `gs` is what Pillow's EPS plugin runs (found through PATH); the others decode other formats
    for name in ("gs", "gsc", "convert", "magick"):
        script = fake / name
        script.write_text(f"#!{sys.executable}\nopen({str(marker)!r}, 'w').close()\n")
        script.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return env, marker


def measure(cmd, tmp_path):
    env, marker = _env(tmp_path)
    out = subprocess.run([sys.executable, os.path.join(HELPERS, "peak_rss.py"), *cmd], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["other_program"] = marker.exists()
    return result


_BASELINES = {}


def baseline(key, cmd, tmp_path):
    """Peak memory and seconds of ``cmd`` given a junk file (measured once per key)."""
    if key not in _BASELINES:
        _BASELINES[key] = measure(cmd, tmp_path)
    return _BASELINES[key]


def assert_refused(result, base, *needles):
    err = result["stderr"].strip()
    assert result["rc"] == 2, result
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    assert result["seconds"] < base["seconds"] + SECONDS, (result["seconds"], base["seconds"])
    assert result["peak_mib"] < base["peak_mib"] + EXTRA_MIB, (result["peak_mib"], base["peak_mib"])
    assert not result["other_program"]
    return err


def read_cmd(kind, path):
    return [sys.executable, os.path.join(HELPERS, "read_untrusted.py"), kind, str(path)]


def refused_reading(kind, path, junk, tmp_path, *needles):
    """Read ``path`` as ``kind`` and check the refusal against the budget of reading ``junk``."""
    base = baseline(kind, read_cmd(kind, junk), tmp_path)
    return assert_refused(measure(read_cmd(kind, path), tmp_path), base, *needles)


# ---------------------------------------------------------------- crafting pickles
def op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_int(n: int) -> bytes:
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw          # LONG1


def glob(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


NP_DTYPE = lambda code: glob("numpy", "dtype") + op_str(code) + b"\x89\x88\x87R"   # noqa: E731
NDARRAY_CALL = glob("numpy", "ndarray") + b"(" + op_int(10 ** 8) + b"\x85" + NP_DTYPE("O8") + b"tR"
RECONSTRUCT_BIG = (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray")
                   + op_int(10 ** 8) + b"\x85" + b"C\x01b" + b"\x87R")
OBJECT_STATE = (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + b"K\x00\x85"
                + b"C\x01b\x87R" + b"(K\x01" + op_int(10 ** 8) + b"\x85" + NP_DTYPE("O8")
                + b"\x89]tb")
MEMO_BOMB = b"N" + b"r" + struct.pack("<I", 1 << 26)          # LONG_BINPUT 2**26
BYTEARRAY = glob("builtins", "bytearray") + op_int(10 ** 9) + b"\x85R"


def nested_memo_list(depth: int) -> bytes:
    """A list of two references to a list of two references to ... (2**depth leaves)."""
    # built outermost first, each level's children appended once the inner level is complete
    # (torch's weights-only reader has no POP): L_k = [L_k-1, L_k-1], L_0 = []
    out = b"".join(b"]q" + bytes([k]) + b"(" for k in range(depth, 0, -1)) + b"]q\x00"
    return out + b"".join(b"h" + bytes([k - 1]) + b"e" for k in range(1, depth + 1))


def dict_of(*items: bytes) -> bytes:
    return b"}(" + b"".join(items) + b"u"


def labels_npy(path, body: bytes) -> None:
    """An original-format labels file: an object-array .npy header then the pickle ``body``."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(b"\x80\x02" + body + b".")


def torch_zip(path, body: bytes, records=None, compress_pickle=False) -> None:
    """A checkpoint in torch's zip layout with the pickle ``body``."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + body + b".",
                   compress_type=zipfile.ZIP_DEFLATED if compress_pickle else zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, data in (records or {}).items():
            z.writestr(f"archive/data/{name}", data)


def tensor_ref(key: str, numel: int, size, stride) -> bytes:
    storage = (b"(" + op_str("storage") + glob("torch", "FloatStorage") + op_str(key)
               + op_str("cpu") + op_int(numel) + b"tQ")
    tup = lambda v: b"(" + b"".join(op_int(x) for x in v) + b"t"    # noqa: E731
    return (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + op_int(0) + tup(size)
            + tup(stride) + b"\x89" + glob("collections", "OrderedDict") + b")R" + b"tR")


def deflate_bomb_zip(path, member: str, gib: float = 1.0, extra=None) -> None:
    """A zip whose ``member`` inflates to ``gib`` GiB of zeros (about 1 MB on disk)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(member, "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(int(gib * 64)):
                f.write(chunk)
        for name, data in (extra or {}).items():
            z.writestr(name, data)


@pytest.fixture
def junk(tmp_path):
    """Junk files (random bytes) under the names the readers expect."""
    folder = tmp_path / "junk"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("junk.pth", "junk.jpg", "junk.png", "junk.txt"):
        (folder / name).write_bytes(rng.bytes(300))
    (folder / "lists").mkdir()
    (folder / "lists" / "cls_labels.npz").write_bytes(rng.bytes(300))
    return folder


# ---------------------------------------------------------------- 1. writes stay in their folder
@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "home" / "victim.txt"
    path.parent.mkdir()
    path.write_text("the user's own file\n")
    return path


def _prepare(voc, lists):
    return subprocess.run([sys.executable, "-m", "datasets.prepare", "--dataset", "voc",
                           "--data_folder", str(voc), "--list_folder", str(lists)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("planted", ["val.txt", "cls_labels.npz"])
def test_a_dangling_link_where_a_derived_file_goes_is_refused_before_any_write(
        planted, synthetic_root, tmp_path, victim):
    lists = tmp_path / "lists"
    lists.mkdir()
    outside = tmp_path / "home" / "created_by_the_link"
    (lists / planted).symlink_to(outside)
    proc = _prepare(synthetic_root / "VOC2012", lists)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err, proc.stderr
    assert "symbolic link" in err and planted in err
    assert not outside.exists() and victim.read_text() == "the user's own file\n"
    assert sorted(os.listdir(lists)) == [planted]          # nothing was written before refusing


def test_planted_temporary_and_probe_names_are_never_opened(synthetic_root, tmp_path, victim):
    """The names an earlier version wrote through (``<list>.tmp``, ``.write_test``) point at the
    victim: the lists are derived all the same and the victim keeps its bytes."""
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in (".write_test", "train_aug.txt.tmp", "val.txt.tmp", "cls_labels.npz.tmp",
                 "train.txt.tmp"):
        (lists / name).symlink_to(victim)
    proc = _prepare(synthetic_root / "VOC2012", lists)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "the user's own file\n"
    assert read_list(str(lists / "train_aug.txt")) and load_labels(str(lists))
    assert all((lists / n).is_symlink() for n in (".write_test", "val.txt.tmp"))


def test_a_list_folder_symlinked_as_a_whole_keeps_working(synthetic_root, tmp_path):
    real = tmp_path / "real_lists"
    real.mkdir()
    link = tmp_path / "lists"
    link.symlink_to(real, target_is_directory=True)
    folder = ensure_lists(voc_layout(str(synthetic_root / "VOC2012")), str(link),
                          ["train_aug", "val"], log=lambda *_: None)
    assert folder == str(link) and (real / "train_aug.txt").is_file() and (real / "cls_labels.npz").is_file()
    assert not (real / "train_aug.txt").is_symlink()


def test_write_atomically_refuses_links_and_leaves_no_temporary_file(tmp_path, victim):
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        write_atomically(str(link), lambda f: f.write("attacker lines\n"))
    assert victim.read_text() == "the user's own file\n"
    plain = tmp_path / "plain.txt"
    write_atomically(str(plain), lambda f: f.write("ok\n"))
    with pytest.raises(RuntimeError):
        write_atomically(str(plain), lambda f: (f.write("half"), (_ for _ in ()).throw(RuntimeError())))
    assert plain.read_text() == "ok\n"
    assert sorted(os.listdir(tmp_path)) == sorted(["home", "out.txt", "plain.txt"])


# ---------------------------------------------------------------- 2. budgets of labels files
LABEL_ATTACKS = {
    "object array called": dict_of(op_str("a"), NDARRAY_CALL),
    "object array rebuilt large": dict_of(op_str("a"), RECONSTRUCT_BIG),
    "object array by state": dict_of(op_str("a"), OBJECT_STATE),
    "memo index 2**26": dict_of(op_str("a"), MEMO_BOMB),
    "nested memo list": dict_of(op_str("a"), nested_memo_list(60)),
    "nested list as the whole file": nested_memo_list(60),
    "bytearray": dict_of(op_str("a"), BYTEARRAY),
    "a call of open": dict_of(op_str("a"), glob("builtins", "open") + op_str("x") + b"\x85R"),
}


@pytest.mark.parametrize("attack", sorted(LABEL_ATTACKS))
def test_a_crafted_original_labels_file_is_refused_within_budget(attack, tmp_path, junk):
    lists = tmp_path / "lists"
    lists.mkdir()
    labels_npy(lists / "cls_labels_onehot.npy", LABEL_ATTACKS[attack])
    assert os.path.getsize(lists / "cls_labels_onehot.npy") < 1000
    refused_reading("labels", lists, junk / "lists", tmp_path, "image-level labels",
                    "cls_labels_onehot.npy")


def test_one_array_under_many_keys_is_refused_unless_it_is_a_label_vector(tmp_path, junk):
    lists = tmp_path / "lists"
    lists.mkdir()
    big = {"a": np.zeros(200_000, np.float64)}
    big.update({f"k{i}": big["a"] for i in range(40)})
    np.save(lists / "cls_labels_onehot.npy", np.array(big, dtype=object), allow_pickle=True)
    refused_reading("labels", lists, junk / "lists", tmp_path, "more than a label vector")
    # the same sharing of a real 20-class vector is harmless and reads
    small = {"a": np.ones(20, np.float32)}
    small.update({f"k{i}": small["a"] for i in range(40)})
    np.save(lists / "cls_labels_onehot.npy", np.array(small, dtype=object), allow_pickle=True)
    assert len(load_labels(str(lists))) == 41


def test_a_deflate_bomb_labels_npz_is_refused_within_budget(tmp_path, junk):
    lists = tmp_path / "lists"
    lists.mkdir()
    deflate_bomb_zip(lists / "cls_labels.npz", "labels.npy",
                     extra={"names.npy": b"\x93NUMPY\x01\x00v\x00" + b" " * 117 + b"\n"})
    refused_reading("labels", lists, junk / "lists", tmp_path, "cls_labels.npz", "compressed")


def test_an_npz_header_declaring_more_than_its_record_is_refused(tmp_path, junk):
    lists = tmp_path / "lists"
    lists.mkdir()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 20), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(80)
    names = io.BytesIO()
    np.save(names, np.array(["a"]))
    with zipfile.ZipFile(lists / "cls_labels.npz", "w") as z:
        z.writestr("labels.npy", npy)
        z.writestr("names.npy", names.getvalue())
    refused_reading("labels", lists, junk / "lists", tmp_path, "more than its record holds")


def test_an_object_array_in_our_npz_is_refused(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    with open(lists / "cls_labels.npz", "wb") as f:
        np.savez(f, names=np.array(["a"], dtype=object), labels=np.ones((1, 20), np.float32))
    with pytest.raises(UserError, match="refused image-level labels .*names.npy of dtype object"):
        load_labels(str(lists))


# ---------------------------------------------------------------- 2. budgets of checkpoints
CKPT_ATTACKS = {
    "object array called": (dict_of(op_str("a"), NDARRAY_CALL), None),
    "object array rebuilt large": (dict_of(op_str("a"), RECONSTRUCT_BIG), None),
    "object array by state": (dict_of(op_str("a"), OBJECT_STATE), None),
    "memo index 2**26": (dict_of(op_str("a"), MEMO_BOMB), None),
    "nested memo list": (dict_of(op_str("a"), nested_memo_list(60)), None),
    "bytearray": (dict_of(op_str("a"), BYTEARRAY), None),
    "tensor past its storage": (dict_of(op_str("a"), tensor_ref("0", 4, (1000,), (1,))),
                                {"0": bytes(16)}),
    "stride-0 view of 10**10": (dict_of(op_str("a"), tensor_ref("0", 4, (10 ** 10,), (0,))),
                                {"0": bytes(16)}),
    "storage larger than its record": (dict_of(op_str("a"), tensor_ref("0", 10 ** 9, (4,), (1,))),
                                       {"0": bytes(16)}),
    "one tensor under 40 keys": (dict_of(*[op_str(f"k{i}") + (tensor_ref("0", 2_000_000, (2_000_000,), (1,)) + b"q\x05" if i == 0 else b"h\x05") for i in range(40)]),
                                 {"0": bytes(8_000_000)}),
}


@pytest.mark.parametrize("attack", sorted(CKPT_ATTACKS))
def test_a_crafted_checkpoint_is_refused_within_budget(attack, tmp_path, junk):
    body, records = CKPT_ATTACKS[attack]
    path = tmp_path / "crafted.pth"
    torch_zip(path, body, records)
    refused_reading("checkpoint", path, junk / "junk.pth", tmp_path, "checkpoint", str(path))


def test_a_deflate_bomb_checkpoint_is_refused_within_budget(tmp_path, junk):
    path = tmp_path / "bomb.pth"
    deflate_bomb_zip(path, "archive/data/0", extra={"archive/data.pkl": b"\x80\x02}.",
                                                    "archive/version": "3\n"})
    assert os.path.getsize(path) < 8 << 20
    refused_reading("checkpoint", path, junk / "junk.pth", tmp_path, "compressed")


@pytest.mark.parametrize("attack", ["nested memo list", "object array called", "bytearray"])
def test_a_crafted_pretrained_pth_is_refused_by_the_checkpoint_reader(attack, tmp_path, junk):
    body, records = CKPT_ATTACKS[attack]
    path = tmp_path / "weights.pth"
    torch_zip(path, body, records)
    refused_reading("pretrained", path, junk / "junk.pth", tmp_path, "refused checkpoint", str(path))


def test_a_deflate_bomb_pretrained_npz_is_refused_within_budget(tmp_path, junk):
    path = tmp_path / "weights.npz"
    deflate_bomb_zip(path, "Transformer/encoder_norm/scale.npy")
    refused_reading("pretrained", path, junk / "junk.pth", tmp_path, "--pretrained_path", "declares")


def test_a_compressed_npz_within_its_ratio_passes_the_zip_check(tmp_path):
    path = tmp_path / "w.npz"
    np.savez_compressed(path, a=np.random.default_rng(0).standard_normal(10_000).astype(np.float32))
    assert set(check_zip(str(path), "npz", max_member=4 * os.path.getsize(path), max_ratio=4)) == {"a.npy"}
    with pytest.raises(UserError, match="compressed"):
        check_zip(str(path), "npz", max_member=4 * os.path.getsize(path))


def test_deeply_nested_saved_arguments_are_refused_by_the_evaluation(tmp_path, junk, synthetic_root):
    """The evaluation reads its settings from the checkpoint's saved arguments: a 60-deep list of
    shared references used to hang it (comparing or printing it is exponential)."""
    path = tmp_path / "args.pth"
    torch_zip(path, dict_of(op_str("model"), b"}", op_str("args"),
                            dict_of(op_str("backbone"), nested_memo_list(60))))
    base = baseline("eval", [sys.executable, "eval_seg_voc.py", "--data_folder",
                             str(synthetic_root / "VOC2012"), "--model_path", str(junk / "junk.pth"),
                             "--work_dir", str(tmp_path / "w0"), "--cpu"], tmp_path)
    result = measure([sys.executable, "eval_seg_voc.py", "--data_folder", str(synthetic_root / "VOC2012"),
                      "--model_path", str(path), "--work_dir", str(tmp_path / "w"), "--cpu"], tmp_path)
    assert_refused(result, base, "refused checkpoint", "nested more than")
    # shallower but not a name: also one line
    torch_zip(path, dict_of(op_str("model"), b"}", op_str("args"),
                            dict_of(op_str("backbone"), b"]q\x00")))
    refused_reading("model", path, junk / "junk.pth", tmp_path, "saved backbone is a list")


def test_the_scanner_passes_real_files_and_bounds_what_they_build(tmp_path):
    import pickle
    import torch
    from utils.pickle_scan import CHECKPOINT_GLOBALS, LABEL_GLOBALS
    labels = {f"id{i}": np.eye(20, dtype=np.float32)[i % 20] for i in range(100)}
    data = pickle.dumps(np.array(labels, dtype=object), protocol=3)
    check_pickle_memo(data)
    scan_pickle(data, LABEL_GLOBALS, 1 << 20, allow_object_scalar=True)
    with pytest.raises(Refused, match="more than 1000 bytes"):
        scan_pickle(data, LABEL_GLOBALS, 1000, allow_object_scalar=True)
    with pytest.raises(Refused, match="memo index"):
        check_pickle_memo(b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 26) + b".")
    torch.save({"w": torch.ones(3), "n": np.arange(3, dtype=np.uint32)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(name)
        records = {n.split("/data/")[1]: z.getinfo(n).file_size for n in z.namelist() if "/data/" in n}
    scan_pickle(pkl, CHECKPOINT_GLOBALS, 1 << 20, storages=records)
    with pytest.raises(Refused, match="record"):
        scan_pickle(pkl, CHECKPOINT_GLOBALS, 1 << 20, storages={})
    shared = [1, 2]
    for _ in range(40):
        shared = [shared, shared]
    with pytest.raises(Refused, match="entries"):
        check_tree({"a": shared}, 64, 100_000, 1 << 30)
    with pytest.raises(Refused, match="nested"):
        check_tree({"a": shared}, 16, 10 ** 9, 1 << 30)


# ---------------------------------------------------------------- 3. ids are names
@pytest.mark.parametrize("bad_id", ["../../elsewhere/name", "/etc/passwd", "sub/name", "..",
                                    "a\\..\\b", "~/x"])
def test_a_list_id_that_is_a_path_is_refused_where_the_list_is_read(bad_id, tmp_path, junk):
    path = tmp_path / "val.txt"
    path.write_text(f"2007_000032\n{bad_id}\n")
    refused_reading("list", path, junk / "junk.txt", tmp_path, f"{path} line 2", "bare image ids")


def test_a_list_with_binary_junk_or_too_large_is_refused(tmp_path):
    path = tmp_path / "val.txt"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="UTF-8"):
        read_list(str(path))
    path.write_text("a\x00b\n")
    with pytest.raises(UserError, match="control characters"):
        read_list(str(path))


def _tiny_checkpoint(path):
    import torch
    from model.network import DualStudentNet
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 21).state_dict(),
                "args": {"backbone": "deit_tiny_patch16_224", "num_classes": 21, "aux_layer": -3}},
               path)
    return path


def test_evaluation_with_an_escaping_id_reads_and_writes_nothing_outside(voc_copy, tmp_path):
    lists = tmp_path / "lists"
    ensure_lists(voc_layout(str(voc_copy)), str(lists), ["val"], log=lambda *_: None)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "name.jpg")
    val = lists / "val.txt"
    val.write_text(val.read_text() + "../../elsewhere/name\n")
    before = sorted(os.listdir(outside))
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pth")
    result = measure([sys.executable, "eval_seg_voc.py", "--data_folder", str(voc_copy), "--list_folder",
                      str(lists), "--model_path", str(ckpt), "--work_dir", str(tmp_path / "w"),
                      "--cpu"], tmp_path)
    err = result["stderr"].strip()
    assert result["rc"] == 2 and "\n" not in err, err
    assert "bare image ids" in err and "val.txt line" in err, err
    assert sorted(os.listdir(outside)) == before


def test_output_path_refuses_names_that_leave_the_folder(tmp_path):
    assert output_path(str(tmp_path), "2007_000032.png") == os.path.join(str(tmp_path), "2007_000032.png")
    for name in ("../x.png", "/tmp/x.png", "a/b.png", ".."):
        with pytest.raises(UserError, match="refused to write"):
            output_path(str(tmp_path), name)


def test_convert_refuses_an_escaping_id_and_writes_nothing_outside(tmp_path, victim):
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(pred / "a.png")
    target = tmp_path / "home" / "victim"          # "../../home/victim" from the output's folder
    lst = tmp_path / "test.txt"
    lst.write_text(f"a\n{target}\n")
    env, marker = _env(tmp_path)
    proc = subprocess.run([sys.executable, "convert_voc_rgb.py", "--input", str(pred), "--output",
                           str(tmp_path / "out"), "--list", str(lst)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "line 2" in err and "bare image ids" in err
    assert victim.read_text() == "the user's own file\n" and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 4. only JPEG and PNG are decoded
def _eps(path):
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
                     b"newpath 0 0 moveto 100 100 lineto stroke showpage\n%%EOF\n")


def _png_header(path, width, height):
    """A PNG whose header declares ``width`` x ``height`` (only the header and an empty IDAT)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def _ico_with_big_png(path):
    png = tmp = path.with_suffix(".inner")
    _png_header(tmp, 13000, 13000)
    data = png.read_bytes()
    tmp.unlink()
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(data), 6 + 16)
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + data)


IMAGE_ATTACKS = {
    "postscript named .jpg": ("x.jpg", _eps, "not a JPEG or PNG"),
    "ico holding a 13000x13000 png": ("x.jpg", _ico_with_big_png, "not a JPEG or PNG"),
    "png declaring 30000x30000": ("x.png", lambda p: _png_header(p, 30000, 30000), "declares"),
    "gif named .png": ("x.png", lambda p: Image.new("P", (8, 8)).save(p, format="GIF"),
                       "not a JPEG or PNG"),
    "truncated jpeg": ("x.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20)),
                       "image"),
}


@pytest.mark.parametrize("attack", sorted(IMAGE_ATTACKS))
def test_a_crafted_image_is_refused_and_no_other_program_runs(attack, tmp_path, junk):
    name, make, needle = IMAGE_ATTACKS[attack]
    path = tmp_path / name
    make(path)
    refused_reading("image", path, junk / "junk.jpg", tmp_path, needle, str(path))


def test_infer_refuses_a_postscript_image_without_starting_ghostscript(tmp_path, junk):
    src = tmp_path / "in"
    src.mkdir()
    _eps(src / "photo.jpg")
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pth")
    result = measure([sys.executable, "infer.py", "--model_path", str(ckpt), "--input", str(src),
                      "--out", str(tmp_path / "out"), "--cpu"], tmp_path)
    lines = result["stderr"].strip().splitlines()
    # infer.py skips an unreadable input with a warning naming why, and stops when none is left
    assert result["rc"] == 2 and lines[-1].startswith("error: ") and len(lines) == 2, result
    assert "not a JPEG or PNG" in lines[0] and "photo.jpg" in lines[0]
    assert not result["other_program"]


def test_convert_refuses_a_bomb_prediction_in_one_line(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    _png_header(pred / "a.png", 30000, 30000)
    lst = tmp_path / "test.txt"
    lst.write_text("a\n")
    base = baseline("convert", [sys.executable, "convert_voc_rgb.py", "--input", str(pred), "--output",
                                str(tmp_path / "o0"), "--list", str(tmp_path / "missing.txt")], tmp_path)
    result = measure([sys.executable, "convert_voc_rgb.py", "--input", str(pred), "--output",
                      str(tmp_path / "out"), "--list", str(lst)], tmp_path)
    assert_refused(result, base, "refused prediction", "declares")
