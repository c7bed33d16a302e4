"""Numbers in README.md and docs/ equal their sources, so they cannot drift from them.

* The demo's numbers quoted next to ``logs/demo/train.log`` (date, training time, the whole run's
  time, segmentation and CAM mIoU, baseline, the "about N min" of ``make demo``) are read from the
  documents and compared with the log; nothing here repeats a number.
* The tables of docs/performance.md equal the ``benchmarks/results/`` JSON files they cite, and each
  JSON file names its date, machine, command and commit.
"""
import datetime
import glob
import json
import os
import re

import pytest

import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_LOG = "logs/demo/train.log"


def _read(path: str) -> str:
    return open(os.path.join(REPO, path), encoding="utf-8").read()


def _flat(text: str) -> str:
    """Markdown as one line: no line breaks, no bold markers."""
    return " ".join(text.replace("**", "").split())


def parse_demo_log(text: str) -> dict:
    """What a demo's ``train.log`` says: ``date``, ``training_s``, the final table's mIoU row
    (``miou``: column -> value) and, when the demo appended its summary, ``total_s``,
    ``summary`` (Seg_1, Seg_2, CAM_1, CAM_2 as printed) and ``baseline``."""
    out = {"date": re.match(r"(\d{4}-\d{2}-\d{2}) ", text).group(1)}
    times = re.findall(r"Training finished in (\d+):(\d\d):(\d\d)", text)
    if times:
        h, m, s = (int(v) for v in times[-1])
        out["training_s"] = 3600 * h + 60 * m + s
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.split()[:1] == ["Class"]]
    if heads:
        columns = lines[heads[-1]].split()[1:]
        row = next(line for line in lines[heads[-1]:] if line.startswith("mIoU"))
        out["miou"] = dict(zip(columns, (float(v) for v in row.split()[1:])))
    m = re.search(r"demo finished in (\d+) s: segmentation mIoU ([\d.]+) / ([\d.]+) \(students 1 / 2\), "
                  r"CAM mIoU ([\d.]+) / ([\d.]+), all-background baseline ([\d.]+)", text)
    if m:
        out["total_s"] = int(m.group(1))
        out["summary"] = dict(zip(("Seg_1", "Seg_2", "CAM_1", "CAM_2"), (float(v) for v in m.groups()[1:5])))
        out["baseline"] = float(m.group(6))
    return out


def quoted_demo_numbers(text: str) -> dict:
    """The demo's numbers a document quotes (as written: mIoU with 2 decimals, times in min + s)."""
    flat = _flat(text)
    out = {}
    m = re.search(r"segmentation mIoU ([\d.]+) / ([\d.]+) \(students 1 / 2\),? CAM mIoU ([\d.]+) / ([\d.]+)", flat)
    if m:
        out["miou"] = dict(zip(("Seg_1", "Seg_2", "CAM_1", "CAM_2"), m.groups()))
    m = re.search(r"training (\d+) min (\d+) s", flat)
    if m:
        out["training_s"] = 60 * int(m.group(1)) + int(m.group(2))
    m = re.search(r"(\d+) min (\d+) s end to end", flat)
    if m:
        out["total_s"] = 60 * int(m.group(1)) + int(m.group(2))
    m = re.search(r"all-background baseline ([\d.]+)", flat)
    if m:
        out["baseline"] = m.group(1)
    m = re.search(r"\((\d{4}-\d{2}-\d{2})[,;][^)]*" + re.escape(DEMO_LOG), flat)
    if m:
        out["date"] = m.group(1)
    m = re.search(r"make demo .*?\(about (\d+) min on 2 CPU cores\)", flat)
    if m:
        out["about_min"] = int(m.group(1))
    return out


def _check(quoted: dict, log: dict) -> list:
    problems = []
    if "miou" in quoted:
        for column, value in quoted["miou"].items():
            actual = log["summary"][column] if "summary" in log else round(log["miou"][column], 2)
            if float(value) != actual or len(value.split(".")[-1]) != 2:
                problems.append(f"{column} {value} but the log says {actual:.2f}")
    if "training_s" in quoted and quoted["training_s"] != log.get("training_s"):
        problems.append(f"training {quoted['training_s']} s but the log says {log.get('training_s')} s")
    if "total_s" in quoted and quoted["total_s"] != log.get("total_s"):
        problems.append(f"whole demo {quoted['total_s']} s but the log says {log.get('total_s')} s")
    if "baseline" in quoted and ("baseline" not in log or float(quoted["baseline"]) != log["baseline"]):
        problems.append(f"baseline {quoted['baseline']} but the log says {log.get('baseline')}")
    if "date" in quoted and quoted["date"] != log["date"]:
        problems.append(f"date {quoted['date']} but the log is of {log['date']}")
    if "about_min" in quoted:
        seconds = log.get("total_s", log.get("training_s"))
        if seconds is None or quoted["about_min"] != round(seconds / 60):
            problems.append(f"about {quoted['about_min']} min but the log says {seconds} s")
    return problems


def test_the_readme_quotes_the_demo_log():
    log = parse_demo_log(_read(DEMO_LOG))
    quoted = quoted_demo_numbers(_read("README.md"))
    # the README does quote the scores, the time and the date of the log (so this test can fail)
    assert {"miou", "date", "about_min"} <= set(quoted) and ("training_s" in quoted or "total_s" in quoted)
    assert not _check(quoted, log), _check(quoted, log)


def test_every_page_citing_the_demo_log_agrees_with_it():
    log = parse_demo_log(_read(DEMO_LOG))
    pages = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    for page in pages:
        text = _read(page)
        if DEMO_LOG in text:
            assert not _check(quoted_demo_numbers(text), log), (page, _check(quoted_demo_numbers(text), log))


def test_the_check_fails_on_numbers_that_drifted():
    log = parse_demo_log(_read(DEMO_LOG))
    good = quoted_demo_numbers(_read("README.md"))
    assert not _check(good, log)
    for key, bad in (("training_s", good.get("training_s", 0) + 60), ("date", "2020-01-01"),
                     ("about_min", good["about_min"] + 3), ("baseline", "99.99")):
        assert _check({**good, key: bad}, log), key
    seg = dict(good["miou"], Seg_1=f"{float(good['miou']['Seg_1']) + 0.01:.2f}")
    assert _check({**good, "miou": seg}, log)


def test_the_demo_summary_line_is_what_the_check_reads(tmp_path):
    """The line demo.py appends to its log carries the whole time and the baseline."""
    log_path = tmp_path / "train.log"
    log_path.write_text("2026-12-02 11:51:24,791 - train_engine.py - INFO: Pytorch version\n"
                        "2026-12-02 12:02:00,685 - train_engine.py - INFO: Training finished in 0:10:35\n")
    demo.log_summary(str(log_path), "demo finished in 651 s: segmentation mIoU 61.81 / 60.45 (students 1 / 2), "
                                    "CAM mIoU 71.12 / 71.42, all-background baseline 14.08")
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - demo.py - INFO: demo", lines[-1])
    log = parse_demo_log(log_path.read_text())
    assert log["total_s"] == 651 and log["training_s"] == 635 and log["baseline"] == 14.08
    quoted = quoted_demo_numbers("make demo # trains it (about 11 min on 2 CPU cores)\nMeasured (2026-12-02, "
                                 f"`{DEMO_LOG}`): 10 min 51 s end to end, segmentation mIoU 61.81 / 60.45 "
                                 "(students 1 / 2), CAM mIoU 71.12 / 71.42, all-background baseline 14.08")
    assert not _check(quoted, log)


def _results(name: str) -> dict:
    data = json.load(open(os.path.join(REPO, "benchmarks", "results", name)))
    for key in ("date", "machine", "command", "commit"):
        assert data.get(key), f"{name} has no {key}"
    datetime.date.fromisoformat(data["date"])
    assert re.fullmatch(r"[0-9a-f]{40}", data["commit"])
    return data


def test_every_cited_result_file_exists_and_names_its_date_machine_command_and_commit():
    cited = set()
    for page in ["README.md"] + glob.glob(os.path.join(REPO, "docs", "*.md")):
        cited |= set(re.findall(r"benchmarks/results/([\w.-]+\.json)", _read(page)))
    assert cited
    for name in sorted(cited):
        _results(name)


def _table(text: str, first_header: str):
    """The rows of the first markdown table whose first header is ``first_header``: its lines up to
    the first line that is not a row of that table."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|") and l.split("|")[1].strip() == first_header)
    rows = []
    for line in lines[start + 2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not line.startswith("|") or len(cells) != len(lines[start].strip("|").split("|")):
            break
        rows.append(cells)
    return rows


def test_performance_tables_equal_their_json_files():
    text = _read("docs/performance.md")
    train = _results("2026-12-07_train_tiny_cpu.json")["phases"]
    for cells in _table(text, "phase"):
        phase = train[cells[0][0]]
        assert float(cells[1]) == round(phase["s_per_iter"], 3), cells
        assert float(cells[2]) == round(phase["images_per_s"], 1), cells
        assert float(cells[3]) == round(1000 * phase["tflop_per_iter"], 1), cells
        stages = {"cams": "cams", "backward": "backward", "forward": "forward", "par": "par_refine", "gmm": "gmm"}
        for name, ms in re.findall(r"(\w+) (\d+)", cells[4]):
            assert int(ms) == round(1000 * phase["breakdown_s"][stages[name.lower()]]), (cells[0], name)
    families = _results("2026-12-07_families_cpu.json")["results"]
    runs = {(r["backbone"], r["grad_checkpointing"]): r for r in families if not r["amp"]}
    rows = _table(text, "backbone")
    assert {(f"`{r[0].strip('`')}`") for r in rows} == {f"`{b}`" for b, _ in runs}
    for cells in rows:
        name = cells[0].strip("`")
        off, on = runs[(name, False)], runs[(name, True)]
        assert cells[1] == off["family"] and int(cells[2]) == off["patch"], cells
        assert float(cells[3]) == round(off["encoder_params_m"], 1), cells
        assert float(cells[4]) == round(off["s_per_step"], 1) and float(cells[5]) == round(on["s_per_step"], 1), cells
        assert float(cells[6]) == round(off["peak_rss_above_start_gib"], 2), cells
        assert float(cells[7]) == round(on["peak_rss_above_start_gib"], 2), cells
    crf = _results("2026-12-07_crf_cpu.json")
    keys = {"pydensecrf, one core": ("pydensecrf", "images_per_s_one_core"),
            "pydensecrf, 2 worker processes": ("pydensecrf", "images_per_s_all_cores"),
            "torch CRF on the CPU, 1 thread": ("torch_cpu_1threads", "images_per_s"),
            "torch CRF on the CPU, 2 threads": ("torch_cpu_2threads", "images_per_s")}
    rows = _table(text, "images/s")
    assert [r[0] for r in rows] == list(keys)
    for cells in rows:
        group, key = keys[cells[0]]
        for value, dataset in zip(cells[1:], ("voc", "coco")):
            digits = len(value.split(".")[1])
            assert float(value) == pytest.approx(round(crf[dataset][group][key], digits)), (cells[0], dataset)


def test_the_encoder_table_equals_its_json_file():
    """README.md's encoder table: each backbone's patch, parameter count and input statistics are
    those of the committed ``benchmarks/results/*_encoder_params.json`` (benchmarks/count_params.py);
    the statistics are named in the table and spelled out once in the text next to it."""
    text = _read("README.md")
    cited = set(re.findall(r"benchmarks/results/([\w.-]+_encoder_params\.json)", text))
    assert len(cited) == 1, cited
    data = _results(cited.pop())
    assert data.get("torch") and data.get("timm")
    runs = {r["backbone"]: r for r in data["results"]}
    number = r"\d+(?:\.\d+)?"
    three = rf"((?:{number}, ){{2}}{number})"
    legend = {name: (mean.split(", "), std.split(", ")) for name, mean, std in
              re.findall(rf"(\w+) {three} / {three}", _flat(text))}
    assert {"ImageNet", "CLIP"} <= set(legend), legend
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = next(i for i, line in enumerate(lines) if "`--backbone`" in line)
    header = [c.strip() for c in lines[head].strip("|").split("|")]
    col = {name: header.index(name) for name in ("patch", "params", "input mean / std")}
    shown = []
    for line in lines[head + 2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        names = [n for n in re.findall(r"`([\w.]+)`", cells[1]) if "_patch" in n]
        patches, params, stats = (cells[col[k]].split(" / ") for k in ("patch", "params", "input mean / std"))
        assert len(names) == len(params) == len(stats) and len(patches) in (1, len(names)), cells
        for i, name in enumerate(names):
            r = runs[name]
            assert int(patches[i % len(patches)]) == r["patch"], (name, patches)
            assert params[i] == f"{r['params'] / 1e6:.1f} M", (name, params[i], r["params"])
            mean, std = legend[stats[i]]
            for printed, value in zip(mean + std, r["input_mean"] + r["input_std"]):
                digits = len(printed.split(".")[1]) if "." in printed else 0
                assert float(printed) == round(value, digits), (name, stats[i], printed, value)
            shown.append(name)
    assert sorted(shown) == sorted(runs), (shown, sorted(runs))


def _cited(text: str, pattern: str) -> list:
    """The result files ``text`` cites whose name matches ``pattern``, loaded (and checked)."""
    return [_results(n) for n in sorted(set(re.findall(r"benchmarks/results/([\w.-]+\.json)", text)))
            if re.search(pattern, n)]


def test_the_cam_evaluation_tables_equal_their_json_files():
    """docs/performance.md#cam-evaluation: the before / after table and the table against the CAM
    passes, row by row, from the cited ``*cam_eval*`` files."""
    text = _read("docs/performance.md")
    runs = {(f["dataset"], r["size"]): r for f in _cited(text, "cam_eval.*before_after") for r in f["runs"]}
    rows = _table(text, "run")
    assert len(rows) == len(runs) >= 4
    for cells in rows:
        dataset = "voc" if cells[0].startswith("VOC") else "coco"
        r = runs[(dataset, int(re.search(r"--size (\d+)", cells[0]).group(1)))]
        assert int(cells[1]) == r["images"], cells
        assert float(cells[2]) == round(r["before_s"], 1) and float(cells[3]) == round(r["after_s"], 1), cells
        assert cells[4] == f"{r['speedup']:.2f}x" and cells[5] == ("identical" if r["identical_results"] else "differ")
    benches = {(f["dataset"], f["size"], f.get("batch_size_flag", f.get("batch_size"))): f for f in _cited(text, "cam_eval_(coco_)?\\d+")}
    rows = _table(text, "CAM evaluation")
    assert len(rows) >= 6
    for cells in rows:
        dataset = "voc" if cells[0].startswith("VOC") else "coco"
        size = int(re.search(r"--size (\d+)", cells[0]).group(1))
        batch = int(re.search(r"--batch_size (\d+)", cells[0]).group(1)) if "--batch_size" in cells[0] else None
        f = benches[(dataset, size, batch)]
        r = f["results"]["amp" if "amp" in cells[1] else "fp32"]
        assert int(re.search(r"(\d+) images", cells[0]).group(1)) == r["images"], cells
        assert float(cells[2]) == round(min(r["cam_passes_s"].values()), 1), cells
        assert float(cells[3]) == round(r["eval_loop_s"], 1), cells
        assert cells[4] == f"{r['loop_over_cam_passes']:.2f}x", cells
        parts = [float(v) for v in cells[5].split(" / ")]
        b = r["breakdown_s"]
        assert parts == [round(b[k], 1) for k in ("cams", "par", "score", "rest_of_loop")], cells


def test_the_bf16_tables_equal_their_sources():
    """docs/performance.md#bf16-on-the-cpu: training step and inference, fp32 against --amp, from
    the cited JSON files; the demo's scores and time from the two cited logs."""
    text = _read("docs/performance.md")
    section = text[text.index("## bf16 on the CPU"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    train = {(f["args"]["backbone"], f["args"]["amp"]): f for f in _cited(section, "_train_")}
    rows = _table(section, "training step")
    assert len(rows) == 6
    for cells in rows:
        backbone = "deit_base_patch16_224" if cells[0].startswith("DeiT-B") else "deit_tiny_patch16_224"
        fp32, amp = (train[(backbone, a)]["phases"][cells[1]]["s_per_iter"] for a in (False, True))
        assert float(cells[2]) == round(fp32, 2) and float(cells[3]) == round(amp, 2), cells
        assert float(cells[4]) == round(amp / fp32, 2), cells
    evals = {f["amp"]: f for f in _cited(section, "_eval_")}
    (cells,) = _table(section, "inference")
    fp32, amp = (evals[a]["inference_images_per_s"] for a in (False, True))
    assert float(cells[1]) == round(fp32, 2) and float(cells[2]) == round(amp, 2), cells
    assert float(cells[3]) == round(amp / fp32, 2), cells
    logs = re.findall(r"`(logs/[\w/.-]+\.log)`", section)
    assert len(logs) == 2, logs
    rows = _table(section, "demo")
    assert len(rows) == 2
    for cells, path in zip(rows, logs):
        log = parse_demo_log(_read(path))
        assert ("--amp" in cells[0]) == ("amp=True" in _read(path)), (cells, path)
        seg = [float(v) for v in cells[1].split(" / ")]
        cam = [float(v) for v in cells[2].split(" / ")]
        assert seg == [log["summary"]["Seg_1"], log["summary"]["Seg_2"]], (cells, path)
        assert cam == [log["summary"]["CAM_1"], log["summary"]["CAM_2"]], (cells, path)
        assert int(cells[3]) == log["total_s"], (cells, path)


def test_the_reproduction_page_quotes_the_originals_logs_and_the_measured_disk():
    """docs/reproduce.md: the cost table and the last validations against logs/original/summary.json
    (the original's logs, transcribed), the disk figures against the cited result files."""
    text = _read("docs/reproduce.md")
    flat = _flat(text)
    original = json.load(open(os.path.join(REPO, "logs", "original", "summary.json")))
    assert "logs/original/summary.json" in text
    rows = _table(text, "run")
    for cells, key in zip(rows, ("voc_deit_b", "coco_deit_b")):
        run = original[key]
        speeds = [float(v) for v in re.findall(r"[\d.]+", cells[2])]
        assert speeds == [run["seconds_per_iteration"][p] for p in "ABC"], cells
        assert float(re.match(r"[\d.]+", cells[3]).group()) == run["minutes_per_validation"], cells
        assert f"{run['validations']} of them" in cells[3] and f"{run['iterations'] // 1000}k" in cells[0], cells
    assert "8 h 15 min" in rows[0][4] and original["voc_deit_b"]["elapsed_at_iteration_20000"] == "8:14:59"
    assert "31 h 28 min" in rows[1][4] and original["coco_deit_b"]["whole_run"].startswith("31:28")
    for key, phrase in (("voc_deit_b", "original's log ends at Seg {Seg_1:.2f} / {Seg_2:.2f} (students 1 / 2), "
                                       "CAM {CAM_1:.2f} / {CAM_2:.2f}"),
                        ("voc_vit_b_21k", "21k log ends at Seg {Seg_1:.2f} / {Seg_2:.2f}, CAM {CAM_1:.2f} / {CAM_2:.2f}")):
        assert phrase.format(**original[key]["val_at_20000"]) in flat, key
    coco = original["coco_deit_b"]["val_part_at_80000"]
    assert f"ends at Seg {coco['Seg_1']:.2f} / {coco['Seg_2']:.2f}" in flat
    (ckpt,) = _cited(text, "checkpoint")
    sizes = {round(r["gigabytes"], 1) for r in ckpt["checkpoints"] if r["backbone"] == "deit_base_patch16_224"}
    assert sizes == {2.2} and "2.2 GB each" in flat
    (disk,) = _cited(text, "logits_disk")
    voc = next(r for r in disk["logits"] if r["dataset"] == "voc")["per_split_gib"]
    coco_disk = next(r for r in disk["logits"] if r["dataset"] == "coco")["per_split_gib"]
    assert round(voc["val"], 1) == round(voc["test"], 1) == 1.6 and "about 1.6 GiB each for VOC val and test" in flat
    assert round(coco_disk["val"]) == 19 and "19 GiB for COCO val" in flat
    assert round(coco_disk["val_part"], 1) == 2.4 and "2.4 GiB for `val_part`" in flat
