"""Dense CRF post-processing of segmentation logits.

Probabilities are the softmax of the logits resized to the image size; the unary is
``-log(max(p, 1e-5))``; a Gaussian pairwise term (sxy 1, compat 1) and a bilateral one (sxy 121,
srgb 5, compat 4) on the original uint8 RGB image; 10 mean-field iterations; argmax of the marginals.
``run_crf`` spreads independent per-image jobs over worker processes, one CPU thread each.

Two implementations of the same model: ``pydensecrf`` (C++, one core per image) and
:mod:`engine.crf_torch` (PyTorch, batched, on the GPU or the CPU); ``--crf_backend`` chooses, and
``auto`` takes the one that is faster where the evaluation runs.
"""
import multiprocessing as mp
import os
from collections import deque
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import UserError

from . import crf_torch
from .crf_torch import CRF_PARAMS



CRF_BACKENDS = ("auto", "torch", "pydensecrf")


def add_crf_backend_flags(p) -> None:
    """``--crf_backend``, ``--crf_batch`` and ``--crf_class_chunk``: every script that runs the
    dense CRF takes all three (check them with :func:`check_crf_flags`)."""
    p.add_argument("--crf_backend", default="auto", choices=CRF_BACKENDS,
                   help="dense CRF implementation: torch (batched PyTorch, on the evaluation's "
                   "device), pydensecrf (C++, CPU worker processes) or auto: torch on a GPU, "
                   "pydensecrf on the CPU (where it is faster); the tests require the same labels on "
                   ">= 99.5%% of pixels, measured 100%% on VOC- and COCO-sized scenes (docs/performance.md)")
    p.add_argument("--crf_batch", type=int, default=None,
                   help="images per torch CRF batch (default 8 on a GPU, 1 on the CPU); lower "
                   "it if the GPU runs out of memory")
    p.add_argument("--crf_class_chunk", type=int, default=0,
                   help="classes filtered at once by the torch CRF (0: all); fewer saves memory, "
                   "same labels")


def check_crf_flags(args) -> None:
    if args.crf_batch is not None and args.crf_batch < 1:
        raise UserError("--crf_batch must be >= 1")
    if args.crf_class_chunk < 0:
        raise UserError("--crf_class_chunk must be >= 0 (0: all classes at once)")


def crf_batch_size(args, device) -> int:
    """``--crf_batch``, else 8 images on a GPU and 1 on the CPU."""
    return args.crf_batch or (8 if torch.device(device).type == "cuda" else 1)


def crf_out_of_memory(device, count: int) -> UserError:
    return UserError(f"{torch.device(device).type} memory ran out in the dense CRF of {count} "
                     "image(s); lower --crf_batch or set --crf_class_chunk (e.g. 21)")


def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_crf_backend(name: str, device: torch.device) -> str:
    """``torch`` or ``pydensecrf`` for ``--crf_backend name`` on ``device``: ``auto`` is torch on a
    GPU and pydensecrf on the CPU (torch where pydensecrf is not installed)."""
    if name not in CRF_BACKENDS:
        raise ValueError(f"unknown CRF backend {name!r}; choose one of {', '.join(CRF_BACKENDS)}")
    if name == "auto":
        name = "torch" if device.type == "cuda" or not pydensecrf_available() else "pydensecrf"
    elif name == "pydensecrf" and not pydensecrf_available():
        raise UserError("--crf_backend pydensecrf: the pydensecrf module is not installed (it was left out "
                        "by make install PYDENSECRF=0, or failed to build); use --crf_backend torch or auto")
    return name


def refine_labels(image: np.ndarray, probs, backend: str, device=None) -> np.ndarray:
    """Dense CRF labels uint8 ``(H, W)`` of one image with the resolved ``backend``: ``probs`` is a
    ``(C, H, W)`` array or tensor; the torch backend runs on ``device`` (default: ``probs``'s)."""
    if backend == "torch":
        return crf_torch.dense_crf_torch(image, torch.as_tensor(probs), device=device)
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    return dense_crf(image, np.asarray(probs, dtype=np.float32))


class CRFQueue:
    """Dense CRF of images handed over one at a time, in the caller's thread.

    ``add(image, probs, done)`` takes a uint8 ``(H, W, 3)`` image and its ``(C, H, W)``
    probabilities. With the torch backend the image waits until ``batch`` images with the same
    class count ``C`` are queued, and they are refined together on ``device``, ``class_chunk``
    classes filtered at once; with pydensecrf it is refined at once. ``done(labels)`` then gets
    the uint8 ``(H, W)`` labels (in the order of ``add`` among images of one class count);
    ``flush()`` refines the images still waiting. ``batch`` and ``class_chunk`` change the speed
    and memory, not the labels (up to float rounding)."""

    def __init__(self, backend: str, device=None, batch: int = 1, class_chunk=None):
        if batch < 1:
            raise ValueError("the CRF batch must hold at least one image")
        self.backend, self.device, self.batch, self.class_chunk = backend, device, int(batch), class_chunk
        self.waiting = {}

    def add(self, image: np.ndarray, probs, done: Callable[[np.ndarray], None]) -> None:
        if self.backend != "torch":
            done(refine_labels(image, probs, self.backend))
            return
        queue = self.waiting.setdefault(int(probs.shape[0]), [])
        queue.append((image, probs, done))
        if len(queue) >= self.batch:
            self._refine(int(probs.shape[0]))

    def _refine(self, classes: int) -> None:
        items = self.waiting.pop(classes, [])
        if not items:
            return
        images, probs, dones = zip(*items)
        device = self.device if self.device is not None else torch.as_tensor(probs[0]).device
        try:
            labels = crf_torch.dense_crf_batch(images, probs, device=device, class_chunk=self.class_chunk)
        except torch.OutOfMemoryError:
            raise crf_out_of_memory(device, len(images)) from None
        for done, label in zip(dones, labels):
            done(label.numpy())

    def flush(self) -> None:
        for classes in list(self.waiting):
            self._refine(classes)


def unary_from_probs(probs: np.ndarray, clip: float = CRF_PARAMS["clip"]) -> np.ndarray:
    """Unary potentials ``-log(max(p, clip))`` of ``probs`` (C, H, W) as C-contiguous float32 (C, H*W)."""
    probs = np.asarray(probs, dtype=np.float32)
    flat = probs.reshape(probs.shape[0], -1)
    return np.ascontiguousarray(-np.log(np.maximum(flat, np.float32(clip))), dtype=np.float32)


def dense_crf(image: np.ndarray, probs: np.ndarray, **params) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, H, W) on ``image`` uint8 (H, W, 3); labels uint8 (H, W).

    Keyword arguments override entries of :data:`CRF_PARAMS`.
    """
    import pydensecrf.densecrf as dcrf  # imported here so the module loads without it

    unknown = set(params) - set(CRF_PARAMS)
    if unknown:
        raise TypeError(f"unknown CRF parameters: {sorted(unknown)}")
    p = {**CRF_PARAMS, **params}
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) with (H, W) = {image.shape[:2]}, got {probs.shape}")
    n_classes, h, w = probs.shape

    crf = dcrf.DenseCRF2D(w, h, n_classes)
    crf.setUnaryEnergy(unary_from_probs(probs, p["clip"]))
    crf.addPairwiseGaussian(sxy=p["gauss_sxy"], compat=p["gauss_compat"])
    crf.addPairwiseBilateral(sxy=p["bi_sxy"], srgb=p["bi_srgb"], rgbim=np.ascontiguousarray(image),
                             compat=p["bi_compat"])
    q = np.array(crf.inference(int(p["iters"])), dtype=np.float32).reshape(n_classes, h, w)
    return np.argmax(q, axis=0).astype(np.uint8)


def probs_from_logits(logits: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Softmax of ``logits`` (C, h, w) resized bilinearly (align_corners=False) to ``size`` = (H, W).

    Computed in float32 on the CPU; returns float32 (C, H, W).
    """
    t = torch.as_tensor(np.asarray(logits)).to(device="cpu", dtype=torch.float32)
    if t.ndim != 3:
        raise ValueError(f"logits must be (C, h, w), got shape {tuple(t.shape)}")
    size = (int(size[0]), int(size[1]))
    t = t.unsqueeze(0)
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return torch.softmax(t, dim=1)[0].numpy().astype(np.float32, copy=False)


def _single_thread_worker() -> None:
    """Pool initializer: one OpenMP / torch thread per worker so N workers use N cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)


def run_crf(jobs: Sequence, fn: Callable, workers: int, desc: str = "CRF") -> List:
    """Apply the picklable top-level ``fn`` to every job, in ``workers`` processes; results in job order.

    ``workers <= 1`` runs in this process. Jobs must be independent and deterministic, so the result
    does not depend on the worker count.
    """
    jobs = list(jobs)
    workers = min(int(workers), len(jobs))
    if workers <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc, total=len(jobs))]
    # fork keeps start-up cheap where it is available; spawn elsewhere (fn must be importable)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(processes=workers, initializer=_single_thread_worker) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=1), desc=desc, total=len(jobs)))


class CRFStream:
    """Dense CRF of images as inference produces them: ``submit(job)`` hands a job to one of
    ``workers`` processes (at most ``2 * workers`` in flight, so memory stays bounded) while the
    caller goes on with the next image; ``close()`` waits and returns the results in job order.
    ``workers <= 1`` runs each job at once in this process. Same results whatever the count."""

    def __init__(self, fn: Callable, workers: int):
        self.fn, self.workers = fn, int(workers)
        self.results: List = []
        self.pending = deque()
        self.pool = None
        if self.workers > 1:
            # a process that has initialised CUDA must not fork
            fork_ok = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()
            ctx = mp.get_context("fork" if fork_ok else "spawn")
            self.pool = ctx.Pool(processes=self.workers, initializer=_single_thread_worker)

    def submit(self, job) -> None:
        if self.pool is None:
            self.results.append(self.fn(job))
            return
        self.pending.append(self.pool.apply_async(self.fn, (job,)))
        while len(self.pending) > 2 * self.workers:
            self.results.append(self.pending.popleft().get())

    def close(self) -> List:
        while self.pending:
            self.results.append(self.pending.popleft().get())
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        return self.results
