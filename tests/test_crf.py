"""Dense CRF post-processing (docs/method.md#evaluation): parameters, unary, logits -> probabilities, the
pydensecrf driver's worker processes."""
import numpy as np
import pytest
import torch

from engine.crf import CRF_PARAMS, PydenseCRFDriver, dense_crf, probs_from_logits, unary_from_probs

H, W = 40, 50


def _scene(seed: int):
    """An image with a bright square on a dark background and noisy 3-class probabilities around it.

    Class 1 is the square, class 0 the background, class 2 a distractor that wins in random pixels.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros((H, W), np.uint8)
    y0, x0 = 8 + seed % 5, 10 + seed % 7
    truth[y0:y0 + 20, x0:x0 + 22] = 1
    image = np.where(truth[..., None] == 1, np.uint8(200), np.uint8(40)).repeat(3, axis=2)
    image = np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    logits = np.zeros((3, H, W), np.float32)
    logits[0] = (truth == 0) * 1.0
    logits[1] = (truth == 1) * 1.0
    logits += rng.normal(0.0, 1.0, logits.shape).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    return image, probs, truth


def test_parameters_are_those_of_the_spec():
    assert CRF_PARAMS["gauss_sxy"] == 1 and CRF_PARAMS["gauss_compat"] == 1
    assert CRF_PARAMS["bi_sxy"] == 121 and CRF_PARAMS["bi_srgb"] == 5 and CRF_PARAMS["bi_compat"] == 4
    assert CRF_PARAMS["iters"] == 10
    assert CRF_PARAMS["clip"] == pytest.approx(1e-5)


@pytest.mark.pydensecrf
def test_unary_clamps_probabilities_at_1e_5():
    probs = np.zeros((2, 3, 4), np.float32)
    probs[0] = 1.0
    u = unary_from_probs(probs)
    assert u.dtype == np.float32 and u.shape == (2, 12) and u.flags["C_CONTIGUOUS"]
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u[1], -np.log(np.float32(1e-5)), rtol=1e-6)
    np.testing.assert_allclose(u[0], 0.0, atol=1e-7)
    # zero probabilities do not break the CRF either
    img = np.full((3, 4, 3), 100, np.uint8)
    assert np.all(dense_crf(img, probs) == 0)


@pytest.mark.pydensecrf
def test_crf_cleans_noise_towards_the_square():
    image, probs, truth = _scene(0)
    noisy = probs.argmax(0)
    out = dense_crf(image, probs)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    noisy_acc = (noisy == truth).mean()
    crf_acc = (out == truth).mean()
    assert noisy_acc < 0.85  # the scene really is noisy
    assert crf_acc > 0.97 and crf_acc > noisy_acc + 0.1
    assert not np.any(out == 2)  # the scattered distractor class disappears


@pytest.mark.pydensecrf
def test_crf_accepts_non_contiguous_inputs_and_parameter_overrides():
    image, probs, _ = _scene(1)
    ref = dense_crf(image, probs)
    out = dense_crf(np.asfortranarray(image), probs.astype(np.float64)[:, :, ::-1][:, :, ::-1])
    np.testing.assert_array_equal(out, ref)
    plain = dense_crf(image, probs, iters=0)  # no mean-field step: argmax of the unary
    np.testing.assert_array_equal(plain, probs.argmax(0))
    with pytest.raises(TypeError):
        dense_crf(image, probs, sxy=3)


def test_probs_from_logits_resizes_and_normalises():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 9)).astype(np.float16)
    p = probs_from_logits(logits, (23, 31))
    assert p.dtype == np.float32 and p.shape == (4, 23, 31)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    ref = torch.nn.functional.interpolate(torch.from_numpy(logits.astype(np.float32))[None],
                                          size=(23, 31), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(p, torch.softmax(ref, 1)[0].numpy(), atol=1e-6)
    same = probs_from_logits(logits.astype(np.float32), (7, 9))  # no resize at the same size
    np.testing.assert_allclose(same, torch.softmax(torch.from_numpy(logits.astype(np.float32)), 0).numpy(),
                               atol=1e-6)


def _crf_inputs(job):
    """Top-level (picklable) prepare: the scene of seed ``job``, its logits at half resolution -> probabilities."""
    image, probs, _ = _scene(job)
    logits = np.log(probs[:, ::2, ::2] + 1e-6).astype(np.float16)
    return image, probs_from_logits(logits, image.shape[:2])


def _crf_result(job, labels):
    """Top-level (picklable) finish: the seed, its labels and the torch threads of the process that ran it."""
    return job, labels, torch.get_num_threads()


def _run(jobs, workers: int):
    crf = PydenseCRFDriver(workers, _crf_inputs, _crf_result)
    for job in jobs:
        crf.submit(job)
    return crf.close()


@pytest.mark.pydensecrf
def test_pydensecrf_driver_results_do_not_depend_on_the_worker_count():
    jobs = list(range(5))
    inline = _run(jobs, workers=1)
    pooled = _run(jobs, workers=2)
    assert [r[0] for r in inline] == jobs and [r[0] for r in pooled] == jobs
    for a, b in zip(inline, pooled):
        np.testing.assert_array_equal(a[1], b[1])
    assert all(r[2] == 1 for r in pooled)  # one thread per worker process
    assert _run([], workers=2) == []
