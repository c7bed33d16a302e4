"""Dense CRF post-processing of segmentation logits.

Probabilities are the softmax of the logits resized to the image size; the unary is
``-log(max(p, 1e-5))``; a Gaussian pairwise term (sxy 1, compat 1) and a bilateral one (sxy 121,
srgb 5, compat 4) on the original uint8 RGB image; 10 mean-field iterations; argmax of the marginals.

Two implementations of the same model: ``pydensecrf`` (C++, one core per image) and
:mod:`engine.crf_torch` (PyTorch, batched, on the GPU or the CPU); ``--crf_backend`` chooses, and
``auto`` takes the one that is faster where the evaluation runs. Scripts hand their images to one
interface, :class:`CRFDriver` (submit a job, results in order, close), made by :func:`crf_driver`:
:class:`PydenseCRFDriver` refines in worker processes, one CPU thread each, while inference goes
on; :class:`TorchCRFDriver` in batches on the device.
"""
import abc
import functools
import importlib
import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

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
    """The one-line error, with its advice, when the torch CRF of ``count`` images runs out of memory."""
    return UserError(f"{torch.device(device).type} memory ran out in the dense CRF of {count} "
                     "image(s); lower --crf_batch or set --crf_class_chunk (e.g. 21)")


def pydensecrf_available() -> bool:
    """Whether the pydensecrf module imports (it is left out by ``make install PYDENSECRF=0``)."""
    try:
        importlib.import_module("pydensecrf.densecrf")
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


def pydensecrf_job(prepare: Callable, finish: Callable, job):
    """The pydensecrf CRF of one job, what :class:`PydenseCRFDriver` runs (in a worker process, or
    in the caller's): ``finish(job, labels)`` of the labels of ``prepare(job)``'s image and
    probabilities (an array or a tensor, refined as float32 on the CPU)."""
    image, probs = prepare(job)
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    return finish(job, dense_crf(image, np.asarray(probs, dtype=np.float32)))


def job_inputs(job) -> Tuple[np.ndarray, object]:
    """The default ``prepare`` of a driver: a job is ``(image, probs, done)``."""
    return job[0], job[1]


def job_done(job, labels: np.ndarray):
    """The default ``finish`` of a driver: ``done(labels)`` of a job ``(image, probs, done)``."""
    return job[2](labels)


class CRFDriver(abc.ABC):
    """Dense CRF of the images a script hands over one at a time while it goes on with the next.

    ``submit(job)``: ``prepare(job)`` gives the job's uint8 ``(H, W, 3)`` image and its ``(C, H, W)``
    probabilities; once they are refined, ``finish(job, labels)`` gets the uint8 ``(H, W)`` labels.
    ``close()`` refines what still waits, ends the driver and returns what ``finish`` returned, in
    the order of ``submit``. By default a job is ``(image, probs, done)`` and ``done(labels)`` is
    called (:func:`job_inputs`, :func:`job_done`). :func:`crf_driver` picks the backend's driver."""

    def __init__(self, prepare: Optional[Callable] = None, finish: Optional[Callable] = None):
        self.prepare = prepare or job_inputs
        self.finish = finish or job_done

    @abc.abstractmethod
    def submit(self, job) -> None:
        """Hand over one job."""

    @abc.abstractmethod
    def close(self) -> List:
        """Refine what still waits; the results of ``finish`` in the order of :meth:`submit`."""


class PydenseCRFDriver(CRFDriver):
    """pydensecrf in ``workers`` processes, one CPU thread each (at most ``2 * workers`` jobs in
    flight, so memory stays bounded): :func:`pydensecrf_job` runs ``prepare`` and ``finish`` there
    too, so both must be picklable top-level functions. ``workers <= 1`` refines each job at once
    in the caller's thread. Same labels whatever the count."""

    def __init__(self, workers: int = 1, prepare: Optional[Callable] = None, finish: Optional[Callable] = None):
        super().__init__(prepare, finish)
        self.workers = int(workers)
        self.job = functools.partial(pydensecrf_job, self.prepare, self.finish)
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
            self.results.append(self.job(job))
            return
        self.pending.append(self.pool.apply_async(self.job, (job,)))
        while len(self.pending) > 2 * self.workers:
            self.results.append(self.pending.popleft().get())

    def close(self) -> List:
        while self.pending:
            self.results.append(self.pending.popleft().get())
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        results, self.results = self.results, []
        return results


class TorchCRFDriver(CRFDriver):
    """The torch CRF (:func:`engine.crf_torch.dense_crf_batch`) on ``device``: a job waits until
    ``batch`` jobs with the same class count ``C`` are queued, and they are refined together,
    ``class_chunk`` classes filtered at once; ``finish`` then runs for each (in the order of
    ``submit`` among jobs of one class count) in the caller's thread, or with ``threads > 0`` in
    that many background threads, so the device goes on with the next images. ``prepare`` runs in
    the caller's thread (a tensor already on the device stays there). ``batch`` and
    ``class_chunk`` change the speed and memory, not the labels (up to float rounding)."""

    def __init__(self, device, batch: int = 1, class_chunk: Optional[int] = None,
                 prepare: Optional[Callable] = None, finish: Optional[Callable] = None, threads: int = 0):
        super().__init__(prepare, finish)
        if batch < 1:
            raise ValueError("the CRF batch must hold at least one image")
        self.device, self.batch, self.class_chunk = torch.device(device), int(batch), class_chunk
        self.waiting = {}        # class count -> [(submit index, job, image, probs)]
        self.submitted = 0
        self.results: List = []  # (submit index, result, or its future with threads)
        self.writer = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None

    def submit(self, job) -> None:
        image, probs = self.prepare(job)
        classes = int(probs.shape[0])
        queue = self.waiting.setdefault(classes, [])
        queue.append((self.submitted, job, image, probs))
        self.submitted += 1
        if len(queue) >= self.batch:
            self._refine(classes)

    def _refine(self, classes: int) -> None:
        indices, jobs, images, probs = zip(*self.waiting.pop(classes))
        try:
            labels = crf_torch.dense_crf_batch(images, probs, device=self.device, class_chunk=self.class_chunk)
        except torch.OutOfMemoryError:
            raise crf_out_of_memory(self.device, len(images)) from None
        if self.writer is None:
            self.results += [(i, self.finish(job, label.numpy())) for i, job, label in zip(indices, jobs, labels)]
            return
        # keep the backlog of background work bounded: the writer runs jobs in order, so waiting for
        # the one handed over 4 batches ago leaves at most about 4 batches queued
        if len(self.results) > 4 * self.batch:
            self.results[-4 * self.batch][1].result()
        self.results += [(i, self.writer.submit(self.finish, job, label.numpy()))
                         for i, job, label in zip(indices, jobs, labels)]

    def close(self) -> List:
        for classes in list(self.waiting):
            self._refine(classes)
        done = [r for _, r in sorted(self.results, key=lambda item: item[0])]
        self.results = []
        if self.writer is not None:
            done = [f.result() for f in done]
            self.writer.shutdown()
            self.writer = None
        return done


def crf_driver(args, backend: str, device, prepare: Optional[Callable] = None,
               finish: Optional[Callable] = None, workers: int = 1, threads: int = 0) -> CRFDriver:
    """The driver of the resolved ``backend`` (:func:`resolve_crf_backend`) for a script's CRF
    flags: torch on ``device``, :func:`crf_batch_size` images per batch and ``--crf_class_chunk``
    classes at a time, ``finish`` in ``threads`` background threads (0: the caller's); pydensecrf
    in ``workers`` processes. See :class:`CRFDriver` for ``prepare`` and ``finish``."""
    if backend == "torch":
        return TorchCRFDriver(device, crf_batch_size(args, device), args.crf_class_chunk or None,
                              prepare, finish, threads)
    return PydenseCRFDriver(workers, prepare, finish)
