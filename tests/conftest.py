"""Shared fixtures: a small synthetic dataset in the real VOC and COCO layouts."""
import os
import shutil

import numpy as np
import pytest
import torch

from datasets import synthetic

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``pydensecrf`` (they run it, or compare against it) are skipped where it is not
    installed (``make install PYDENSECRF=0``)."""
    from engine.crf import pydensecrf_available
    if pydensecrf_available():
        return
    skip = pytest.mark.skip(reason="pydensecrf is not installed (make install PYDENSECRF=0)")
    for item in items:
        if "pydensecrf" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ref():
    """Inputs and outputs of the original implementation's components (components.npz), as tensors."""
    data = np.load(os.path.join(FIXTURES, "components.npz"))
    return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(entry, argv)``: run a script's entry point, expect exit code 2 and a single
    ``error: ...`` line on stderr, and return that line."""
    def run(entry, argv):
        with pytest.raises(SystemExit) as exc:
            entry(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err
    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of many small element-wise ops (faster on a shared CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A read-only-by-convention synthetic dataset: VOC2012/ and coco/ (do not modify it)."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_voc(root, num_train=40, num_val=12, num_test=5, seed=3)
    synthetic.write_coco(root, num_train=30, num_val=12, seed=3)
    return root


@pytest.fixture
def voc_copy(synthetic_root, tmp_path):
    """A private copy of the synthetic VOC2012 folder that a test may damage."""
    dst = tmp_path / "VOC2012"
    shutil.copytree(synthetic_root / "VOC2012", dst)
    return dst


@pytest.fixture
def coco_copy(synthetic_root, tmp_path):
    dst = tmp_path / "coco"
    shutil.copytree(synthetic_root / "coco", dst)
    return dst
