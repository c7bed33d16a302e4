"""``--amp``: bf16 autocast where the device has bf16, one line and fp32 where it has not
(utils/precision.py), the same for every script."""
import pytest
import torch

from utils import precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) bf16 arithmetic."""
    def set_to(value: bool):
        precision.cpu_has_bf16.cache_clear()
        monkeypatch.setattr(precision, "_linux_cpu_flags", lambda: {"avx512f", "avx512_bf16"} if value else {"avx2"})
    yield set_to
    precision.cpu_has_bf16.cache_clear()


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n",
     {"fpu", "sse2", "avx512f", "avx512_bf16", "amx_tile"}),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 sve\nCPU implementer\t: 0x41\n", {"fp", "asimd", "bf16", "sve"}),
    ("processor\t: 0\nmodel name\t: something\n", None),
])
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert precision._linux_cpu_flags(str(path)) == expected
    assert precision._linux_cpu_flags(str(tmp_path / "missing")) is None


def test_the_cpu_is_described_by_its_model_name_and_usable_cores(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9999 64-Core Processor\n"
                    "flags\t\t: fpu avx512_bf16\n")
    assert precision._cpuinfo(("model name",), str(path)) == "AMD EPYC 9999 64-Core Processor"
    assert precision._cpuinfo(("model name",), str(tmp_path / "missing")) is None
    real = precision._cpuinfo
    monkeypatch.setattr(precision, "_cpuinfo", lambda keys, p=str(path): real(keys, p))
    monkeypatch.setattr(precision.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert precision.cpu_description() == "2 CPU cores (AMD EPYC 9999 64-Core Processor)"


@pytest.mark.parametrize("flags, has", [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                                        ({"asimd", "bf16"}, True), ({"avx512f", "avx2"}, False), (set(), False)])
def test_bf16_is_the_cpu_flags(monkeypatch, flags, has):
    precision.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(precision, "_linux_cpu_flags", lambda: flags)
    try:
        assert precision.cpu_has_bf16() is has
    finally:
        precision.cpu_has_bf16.cache_clear()


def test_amp_without_bf16_is_one_line_and_fp32(cpu_bf16):
    said = []
    cpu_bf16(False)
    assert precision.resolve_amp(True, torch.device("cpu"), said.append) is False
    assert len(said) == 1 and "--amp" in said[0] and "fp32" in said[0] and "\n" not in said[0]
    cpu_bf16(True)
    assert precision.resolve_amp(True, torch.device("cpu"), said.append) is True
    assert precision.resolve_amp(False, torch.device("cpu"), said.append) is False
    assert len(said) == 1                                  # nothing said when bf16 runs or was not asked for


def test_autocast_runs_the_network_in_bf16_only_when_enabled():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with precision.autocast(torch.device("cpu"), True):
        assert layer(x).dtype == torch.bfloat16
    with precision.autocast(torch.device("cpu"), False):
        assert layer(x).dtype == torch.float32


def test_every_amp_flag_has_the_one_help():
    import demo
    import infer
    from engine.cam_evaluation import get_args_parser as cam_parser
    from engine.evaluation import get_args_parser as eval_parser
    from engine.train_args import get_args_parser as train_parser
    parsers = [train_parser("voc"), train_parser("coco"), eval_parser("voc"), eval_parser("coco"),
               cam_parser("voc"), cam_parser("coco"), infer.get_args_parser(), demo.get_args_parser()]
    for p in parsers:
        action = next(a for a in p._actions if "--amp" in a.option_strings)
        assert action.help == precision.AMP_HELP and action.default is False, p.prog
