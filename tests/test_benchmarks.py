"""The benchmark scripts run end to end on a tiny CPU configuration and write their numbers."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_bench_train_reports_every_phase_with_a_breakdown(voc_copy, tmp_path):
    out = tmp_path / "train.json"
    res = _run(["benchmarks/bench_train.py", "--data_folder", str(voc_copy), "--backbone",
                "deit_tiny_patch16_224", "--crop_size", "48", "--iters", "1", "--warmup", "0",
                "--num_workers", "0", "--cpu", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert set(data["phases"]) == {"A", "B", "C"}
    assert data["phases"]["A"]["peak_mem_gib"] is None and "peak memory n/a (CPU)" in res.stdout
    c = data["phases"]["C"]
    assert c["s_per_iter"] > 0 and c["tflop_per_iter"] > 0
    for stage in ("cams", "forward", "par_refine", "gmm", "consistency", "strong_view", "backward",
                  "optimizer", "data_wait"):
        assert stage in c["breakdown_s"], stage
    assert "gmm" not in data["phases"]["B"]["breakdown_s"]
    assert "par_refine" not in data["phases"]["A"]["breakdown_s"]


@pytest.mark.pydensecrf
def test_bench_eval_checks_crf_workers_against_the_plain_loop(voc_copy, tmp_path):
    out = tmp_path / "eval.json"
    res = _run(["benchmarks/bench_eval.py", "--data_folder", str(voc_copy), "--backbone",
                "deit_tiny_patch16_224", "--num_images", "3", "--crf_workers", "1", "2", "--cpu",
                "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("identical to the loop: True") == 2
    data = json.loads(out.read_text())
    assert data["saved_mib_per_image"] * 8 <= data["original_mib_per_image"]
    assert data["crf_file_vs_memory_pixel_agreement"] == 1.0   # same device: the same bits


def test_bench_cam_eval_times_the_evaluation_against_its_cam_passes(voc_copy, tmp_path):
    out = tmp_path / "cam.json"
    res = _run(["benchmarks/bench_cam_eval.py", "--data_folder", str(voc_copy), "--split", "val",
                "--num_images", "3", "--size", "48", "--train_batch", "2", "--cpu", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert len(data["commit"]) == 40 and data["date"] and data["machine"] and "bench_cam_eval.py" in data["command"]
    assert set(data["results"]) == {"fp32", "amp"}
    fp32 = data["results"]["fp32"]
    assert fp32["images"] == 3 and set(fp32["cam_passes_s"]) == {"batch_1", "batch_2"}
    assert 0 < fp32["eval_loop_s"] < fp32["eval_whole_s"]
    assert fp32["loop_over_cam_passes"] == pytest.approx(fp32["eval_loop_s"] / min(fp32["cam_passes_s"].values()))
    assert {"cams", "par", "score", "rest_of_loop"} <= set(fp32["breakdown_s"])
    assert set(fp32["miou"]) == {"CAM_1", "aux_CAM_1", "CAM_2", "aux_CAM_2", "PAR_1", "PAR_2"}


@pytest.mark.slow
def test_device_check_script_runs_every_step_and_writes_the_numbers(tmp_path):
    """The one-call GPU measurement script, rehearsed on the CPU with a tiny configuration."""
    env = dict(os.environ, PYTHON=sys.executable, BACKBONE="deit_tiny_patch16_224", CROP="64",
               ITERS="1", WARMUP="0", N_EVAL="2", N_VAL="4", H="64", W="80", NPROC="1",
               N_CRF="2", CRF_SIZE="48 64", COMMIT="abc123", FAMILY_ITERS="1", FAMILY_WARMUP="0",
               FAMILY_ARGS="depth=1,embed_dim=32,num_heads=1")
    res = subprocess.run(["bash", "benchmarks/device_check.sh", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    out = tmp_path / "out"
    steps = [line.split()[0] for line in (out / "wall.txt").read_text().splitlines()]
    assert steps == ["train_no-amp", "train_amp", "data", "eval_no-amp", "eval_amp", "crf", "e2e", "ddp",
                     "families"]
    for name in ("train_no-amp", "train_amp"):
        assert set(json.loads((out / f"{name}.json").read_text())["phases"]) == {"A", "B", "C"}
    assert json.loads((out / "eval_no-amp.json").read_text())["crf_file_vs_memory_pixel_agreement"] == 1.0
    assert "CRF_ensemble" in (out / "e2e.txt").read_text()
    assert "Training finished" in (out / "ddp.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["commit"] == "abc123" and summary["torch"] and "date" in summary
    assert summary["crf"]["voc"]["torch_cpu_1threads"]["images_per_s"] > 0
    assert set(summary["wall_s"]) == set(steps)
    # DINOv2-B and CLIP-B (shrunk for the rehearsal): fp32 / amp x without / with checkpointing
    runs = summary["families"]["results"]
    assert [(r["family"], r["amp"], r["grad_checkpointing"]) for r in runs] == [
        (f, a, c) for f in ("dinov2", "clip") for a in (False, True) for c in (False, True)]
    assert all(r["s_per_step"] > 0 and r["first_loss"] == r["first_loss"] for r in runs)


@pytest.mark.pydensecrf
def test_bench_crf_times_both_backends_and_checks_agreement(tmp_path):
    out = tmp_path / "crf.json"
    res = _run(["benchmarks/bench_crf.py", "--num_images", "2", "--size", "40", "56", "--workers", "2",
                "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    for kind, classes in (("voc", 21), ("coco", 81)):
        d = data[kind]
        assert d["classes"] == classes and d["size"] == [40, 56] and d["images"] == 2
        assert d["pydensecrf"]["images_per_s_one_core"] > 0 and d["pydensecrf"]["workers"] == 2
        for key in ("torch_cpu_1threads", f"torch_cpu_{data['torch_threads']}threads"):
            assert d[key]["images_per_s"] > 0
            assert d[key]["pixel_agreement"] >= 0.995
    assert "images/s" in res.stdout and "of pixels equal pydensecrf's" in res.stdout
    assert len(data["commit"]) == 40 and data["date"] and data["machine"] and "bench_crf.py" in data["command"]


def test_bench_checkpoint_writes_the_runs_payload_and_measures_its_size(tmp_path):
    out = tmp_path / "ckpt.json"
    res = _run(["benchmarks/bench_checkpoint.py", "--backbone", "deit_tiny_patch16_224", "--num_classes", "21",
                "--folder", str(tmp_path), "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(out.read_text())["checkpoints"]
    assert row["backbone"] == "deit_tiny_patch16_224" and row["write_seconds"] > 0
    # the weights in fp32 plus AdamW's two moments of every trainable weight, and a little more
    least = 4 * row["params"] + 8 * row["trainable_params"]
    assert least < row["bytes"] < least * 1.01
    assert 0 < row["pickle_bytes"] < 1 << 20
    assert os.listdir(tmp_path) == ["ckpt.json"]            # the checkpoint itself is not left behind


def test_bench_logits_disk_saves_the_evaluations_files_and_sizes_them(tmp_path):
    out = tmp_path / "logits.json"
    res = _run(["benchmarks/bench_logits_disk.py", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {(r["dataset"], tuple(r["image_size"])): r for r in json.loads(out.read_text())["logits"]}
    coco = rows[("coco", (480, 640))]
    # both students' 81 class maps at the 28 x 28 token grid in float32, plus the npz headers
    assert 2 * 81 * 28 * 28 * 4 < coco["bytes_per_image"] < 2 * 81 * 28 * 28 * 4 + 4096
    assert coco["per_split_gib"]["val"] == round(40137 * coco["bytes_per_image"] / 2 ** 30, 2)
    voc = rows[("voc", (375, 500))]
    # per student, scale and mirror: 21 maps at about a sixteenth of the scaled sides
    grid = sum(round(375 * s / 16) * round(500 * s / 16) for s in (1.0, 1.5, 1.25))
    assert 0.9 < voc["bytes_per_image"] / (2 * 2 * 21 * 4 * grid) < 1.1
