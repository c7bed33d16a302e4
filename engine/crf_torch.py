"""Fully connected CRF in PyTorch: mean-field inference with permutohedral-lattice filtering.

The model is the one :func:`engine.crf.dense_crf` runs through ``pydensecrf`` (Krähenbühl and
Koltun, NIPS 2011), with the same conventions so the labels agree with it:

- unary ``-log(max(p, 1e-5))``; Q starts as the softmax of ``-unary``;
- a Gaussian kernel on the pixel position ``(x, y) / sxy`` and a bilateral kernel on
  ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``, each with Potts compatibility ``w``:
  every iteration ``Q = softmax(-unary + sum_k w_k * K_k(Q))`` (the kernel includes the pixel
  itself, as ``pydensecrf``'s does);
- each kernel is normalised symmetrically, ``K(Q) = n * L(n * Q)`` with ``n = 1 / sqrt(L(1))``,
  where ``L`` is the lattice filter;
- the lattice filter (Adams, Baek and Davis, Eurographics 2010): features are scaled by
  ``sqrt(2/3) (d+1) / sqrt((i+1)(i+2))`` and embedded in the hyperplane ``H_d`` of R^(d+1);
  each point is splatted with its barycentric weights onto the d+1 vertices of its enclosing
  simplex, blurred along each of the d+1 lattice directions with the weights ``(1/2, 1, 1/2)``
  and sliced back with the same weights, times ``1 / (1 + 2^-d)``.

Everything is a tensor operation: the lattice points are found by encoding each vertex as one
int64 and ``torch.unique``; neighbours by ``searchsorted`` on the sorted codes; splat, each blur
direction and slice are sparse CSR matrices built once per lattice, so one filtering is d+3
sparse x dense products (cuSPARSE on the GPU, no atomics). Several images go through one lattice
(the image index is part of every vertex's code, so their points never mix); the classes can be
filtered in chunks to bound the memory. No host synchronisation happens inside the mean-field
iterations. :class:`engine.crf.TorchCRFDriver` batches a script's images through
:func:`dense_crf_batch`.
"""
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch

# the paper's dense CRF (both backends, :mod:`engine.crf`): Gaussian and bilateral kernels, mean-field
# iterations, the probability floor of the unary
CRF_PARAMS = {
    "gauss_sxy": 1,
    "gauss_compat": 1,
    "bi_sxy": 121,
    "bi_srgb": 5,
    "bi_compat": 4,
    "iters": 10,
    "clip": 1e-5,
}


class Lattice:
    """The permutohedral lattice of the features ``(N, d)`` of ``N`` points (float32), with the
    points' image index ``(N,)`` (int64) keeping images apart. ``filter(values)`` applies the
    Gaussian of unit standard deviation in feature space to ``values (N, C)``."""

    def __init__(self, features: torch.Tensor, image_index: torch.Tensor):
        n, d = features.shape
        self.d = d
        elevated = _elevate(features)
        rem0, rank = _enclosing_simplex(elevated)
        weights = _barycentric(elevated, rem0, rank)                   # (N, d+1)
        keys = _simplex_vertices(rem0, rank)                           # (N, d+1, d)
        flat = keys.reshape(-1, d)
        self._set_codes(flat, image_index)
        image_of_vertex = image_index.long().repeat_interleave(d + 1)
        codes = self._encode(flat, image_of_vertex)
        uniq, inverse = torch.unique(codes, return_inverse=True)       # sorted codes
        self.m = uniq.numel()
        offsets = inverse.view(n, d + 1)                               # (N, d+1) vertex ids
        self._build_matrices(offsets, weights, self._neighbours(uniq))

    def _set_codes(self, flat: torch.Tensor, image_index: torch.Tensor) -> None:
        """One int64 per vertex ``flat (V, d)``: mixed radix over the coordinates (with room for
        the neighbours one step away) and the image index."""
        d = self.d
        n = flat.shape[0] // (d + 1)
        lo = flat.amin(0) - (d + 1)
        span = flat.amax(0) + (d + 1) - lo + 1
        images = int(image_index.max()) + 1 if n else 1
        radix = [int(s) for s in span.tolist()]
        if math.log2(images) + sum(math.log2(s) for s in radix) >= 62:
            raise ValueError("lattice coordinates too large to encode; filter fewer images at once")
        mult = [1] * d
        for i in range(d - 2, -1, -1):
            mult[i] = mult[i + 1] * radix[i + 1]
        self._lo = lo
        self._mult = torch.tensor(mult, device=flat.device, dtype=torch.int64)
        self._image_mult = mult[0] * radix[0]

    def _neighbours(self, uniq: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """For each of the d+1 directions, the ids of each vertex's two neighbours (``m`` where
        absent): n1 = key - 1 (+ (d+1) on coordinate j), n2 = key + 1 (...)."""
        d, dev = self.d, uniq.device
        keys_u = self._decode(uniq)                                    # (M, d)
        img_u = uniq // self._image_mult
        eye = torch.zeros(d + 1, d, dtype=torch.int64, device=dev)
        eye[torch.arange(d), torch.arange(d)] = d + 1                  # direction d moves no stored coordinate
        neigh = []
        for j in range(d + 1):
            n1 = keys_u - 1 + eye[j]
            n2 = keys_u + 1 - eye[j]
            neigh.append((self._find(uniq, self._encode(n1, img_u)),
                          self._find(uniq, self._encode(n2, img_u))))
        return neigh

    def _build_matrices(self, offsets: torch.Tensor, weights: torch.Tensor, neigh) -> None:
        """Splat, each blur and slice as sparse matrices (CSR): sparse x dense products replace
        scatters and gathers of (N, d+1, C) tensors, on the CPU and on the GPU alike."""
        n, d, dev = offsets.shape[0], self.d, offsets.device
        pixels = torch.arange(n, device=dev).repeat_interleave(d + 1)
        vertex = offsets.reshape(-1)
        self.splat_mat = _csr(vertex, pixels, weights.reshape(-1), (self.m, n))
        alpha = 1.0 / (1.0 + 2.0 ** (-d))                              # the slice's normalisation
        self.slice_mat = _csr(pixels, vertex, weights.reshape(-1) * alpha, (n, self.m))
        rows = torch.arange(self.m, device=dev)
        self.blur_mats = []
        for n1, n2 in neigh:
            cols = torch.cat([rows, n1, n2])
            keep = cols < self.m                                       # absent neighbours drop out
            vals = torch.cat([torch.ones(self.m, device=dev), torch.full((2 * self.m,), 0.5, device=dev)])
            self.blur_mats.append(_csr(rows.repeat(3)[keep], cols[keep], vals[keep], (self.m, self.m)))

    def _encode(self, keys: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return ((keys - self._lo) * self._mult).sum(1) + image * self._image_mult

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        rem = codes % self._image_mult
        out = []
        for i in range(self.d):
            out.append(rem // self._mult[i])
            rem = rem % self._mult[i]
        return torch.stack(out, 1) + self._lo

    def _find(self, sorted_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Index of each code in ``sorted_codes``, or ``m`` (the empty slot) where it is absent."""
        pos = torch.searchsorted(sorted_codes, codes).clamp_(max=self.m - 1)
        return torch.where(sorted_codes[pos] == codes, pos, torch.full_like(pos, self.m))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat ``values (N, C)``, blur along the d+1 directions, slice: ``(N, C)``."""
        grid = self.splat_mat @ values.contiguous()
        for blur in self.blur_mats:
            grid = blur @ grid
        return self.slice_mat @ grid


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Features ``(N, d)`` scaled and embedded in H_d: ``(N, d+1)`` float32 (the elevation of
    Adams et al., eq. on p.5)."""
    n, d = features.shape
    dev = features.device
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = torch.tensor([inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)],
                         dtype=torch.float64).to(device=dev, dtype=torch.float32)
    cf = features.float() * scale                                  # (N, d)
    tail = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])   # tail[:, j] = sum_{i>=j} cf_i
    elevated = torch.empty(n, d + 1, device=dev, dtype=torch.float32)
    elevated[:, 0] = tail[:, 0]
    j = torch.arange(1, d + 1, device=dev, dtype=torch.float32)
    rest = torch.cat([tail[:, 1:], torch.zeros(n, 1, device=dev)], 1)
    elevated[:, 1:] = rest - j * cf
    return elevated


def _enclosing_simplex(elevated: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The nearest remainder-0 lattice point ``rem0 (N, d+1)`` of each elevated point and the
    ranks ``(N, d+1)`` int64 of its residuals, which name the enclosing simplex."""
    d = elevated.shape[1] - 1
    down = torch.round(elevated * (1.0 / (d + 1)))
    rem0 = down * (d + 1)
    total = down.sum(1, keepdim=True)                              # integral
    resid = elevated - rem0
    # rank[i] = #{j > i: r_j > r_i} + #{j < i: r_j >= r_i}: position in the descending order
    ri, rj = resid.unsqueeze(2), resid.unsqueeze(1)
    idx = torch.arange(d + 1, device=elevated.device)
    later = (idx.view(1, -1) > idx.view(-1, 1))                    # [i, j]: j > i
    greater = torch.where(later, rj > ri, rj >= ri) & (idx.view(1, -1) != idx.view(-1, 1))
    rank = greater.sum(2).float() + total
    wrap_up, wrap_down = rank < 0, rank > d
    rank = rank + (d + 1) * wrap_up - (d + 1) * wrap_down
    rem0 = rem0 + (d + 1) * wrap_up - (d + 1) * wrap_down
    return rem0, rank.long()


def _barycentric(elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The barycentric weights ``(N, d+1)`` of the d+1 vertices of each point's simplex."""
    n, d = elevated.shape[0], elevated.shape[1] - 1
    v = (elevated - rem0) * (1.0 / (d + 1))
    bary = torch.zeros(n, d + 2, device=elevated.device, dtype=torch.float32)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return bary[:, : d + 1].contiguous()


def _simplex_vertices(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The first d coordinates ``(N, d+1, d)`` int64 of each point's d+1 simplex vertices
    (vertex r is rem0 + canonical[r][rank]; the last coordinate follows from the others)."""
    d = rem0.shape[1] - 1
    r = torch.arange(d + 1, device=rem0.device).view(1, -1, 1)    # (1, d+1, 1)
    rk = rank[:, None, :d]                                          # (N, 1, d)
    canonical = torch.where(rk <= d - r, r, r - (d + 1))           # (N, d+1, d)
    return rem0[:, None, :d].long() + canonical


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """A sparse CSR matrix from coordinates (duplicates summed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr()


class DenseKernel:
    """A symmetric-normalised Gaussian kernel on ``features`` with Potts weight ``weight``."""

    def __init__(self, features: torch.Tensor, image_index: torch.Tensor, weight: float):
        self.lattice = Lattice(features, image_index)
        ones = features.new_ones(features.shape[0], 1)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)   # (N, 1)
        self.weight = weight

    def add_to(self, energy: torch.Tensor, q: torch.Tensor, chunk: int) -> None:
        """``energy += weight * K(q)``, ``chunk`` classes at a time."""
        scale = self.norm * self.weight
        for s in range(0, q.shape[1], chunk):
            filtered = self.lattice.filter(q[:, s:s + chunk] * self.norm)
            energy[:, s:s + chunk].addcmul_(filtered, scale)


def _features(images: Sequence[torch.Tensor], p: dict, device) -> Tuple[torch.Tensor, ...]:
    pos, rgb, index = [], [], []
    for k, img in enumerate(images):
        h, w = img.shape[:2]
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        pos.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))
        rgb.append(img.to(device).reshape(-1, 3).float())
        index.append(torch.full((h * w,), k, device=device, dtype=torch.int64))
    pos, rgb, index = torch.cat(pos), torch.cat(rgb), torch.cat(index)
    gauss = pos / float(p["gauss_sxy"])
    bilateral = torch.cat([pos / float(p["bi_sxy"]), rgb / float(p["bi_srgb"])], 1)
    return gauss, bilateral, index


@torch.no_grad()
def dense_crf_batch(images: Sequence, probs: Sequence, device=None, class_chunk: Optional[int] = None,
                    **params) -> List[torch.Tensor]:
    """Dense CRF labels of several images at once.

    ``images``: uint8 ``(H, W, 3)`` arrays or tensors; ``probs``: matching ``(C, H, W)`` class
    probabilities (float). Returns uint8 ``(H, W)`` label tensors on the CPU. ``device``: where to
    run (default: the device of the first probability tensor, else the CPU); ``class_chunk``: how
    many classes are filtered at once (default all; fewer saves memory, same result).
    Keyword arguments override entries of :data:`CRF_PARAMS`."""
    unknown = set(params) - set(CRF_PARAMS)
    if unknown:
        raise TypeError(f"unknown CRF parameters: {sorted(unknown)}")
    p = {**CRF_PARAMS, **params}
    if len(images) != len(probs) or not images:
        raise ValueError("give one probability map per image (and at least one image)")
    probs = [torch.as_tensor(q) for q in probs]
    device = torch.device(device) if device is not None else probs[0].device
    images = [torch.as_tensor(img) for img in images]
    sizes = []
    for img, q in zip(images, probs):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {tuple(img.shape)}")
        if q.ndim != 3 or tuple(q.shape[1:]) != tuple(img.shape[:2]) or q.shape[0] != probs[0].shape[0]:
            raise ValueError(f"probs must be (C, H, W) with (H, W) = {tuple(img.shape[:2])} and one C "
                             f"for all images, got {tuple(q.shape)}")
        sizes.append(img.shape[0] * img.shape[1])
    c = probs[0].shape[0]
    chunk = int(class_chunk or c)
    gauss_f, bi_f, index = _features(images, p, device)
    kernels = [DenseKernel(gauss_f, index, float(p["gauss_compat"])),
               DenseKernel(bi_f, index, float(p["bi_compat"]))]
    del gauss_f, bi_f
    q = torch.cat([t.to(device=device, dtype=torch.float32).reshape(c, -1).t() for t in probs])
    neg_unary = torch.log(q.clamp_min_(float(p["clip"])))             # -unary, (N, C)
    q = torch.softmax(neg_unary, 1)
    for _ in range(int(p["iters"])):
        energy = neg_unary.clone()
        for kernel in kernels:
            kernel.add_to(energy, q, chunk)
        q = torch.softmax(energy, 1)
    labels = q.argmax(1).to(torch.uint8).cpu()
    out, start = [], 0
    for img, n in zip(images, sizes):
        out.append(labels[start:start + n].view(img.shape[0], img.shape[1]))
        start += n
    return out
