"""The DuPL network: two independent students (docs/method.md#network).

A student is an encoder (the timm model of a :class:`~model.backbone.Backbone`: the paper's
ViT/DeiT, or DINOv2, DINOv3, CLIP, SigLIP, EVA-02), a classifier and an auxiliary classifier (1x1
convs without bias on globally max-pooled tokens) and a LargeFOV decoder, all three as wide as the
encoder. Module names follow the original (``branch1.encoder...``, ``branch1.classifier``,
``branch1.aux_classifier``, ``branch1.decoder.conv6/7/8``), so its checkpoints load unchanged
(:func:`load_network`).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.input_stats import InputStats
from utils.checkpoint import network_state, read_checkpoint
from utils.errors import UserError

from .backbone import Backbone
from .settings import paper


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head: 3x3 conv (dilation 5) -> ReLU -> 3x3 conv (dilation 5) -> ReLU ->
    1x1 conv, no biases. ``(B, D, h, w) -> (B, C, h, w)``."""

    def __init__(self, in_planes: int, num_classes: int, planes: int = 512, dilation: int = 5):
        super().__init__()
        self.conv6 = nn.Conv2d(in_planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(planes, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv8(F.relu(self.conv7(F.relu(self.conv6(x)))))


class StudentOutput(NamedTuple):
    """Training/validation outputs of one student for a batch of N images."""
    cls: torch.Tensor        # (N, K) classifier logits on the max-pooled final tokens
    seg: torch.Tensor        # (N, C, h, w) decoder logits
    fmap: torch.Tensor       # (N, D, h, w) final patch-token map
    cls_aux: torch.Tensor    # (N, K) aux-classifier logits on the max-pooled aux tokens
    fmap_aux: torch.Tensor   # (N, D, h, w) aux-block patch-token map (no LayerNorm)


class Student(nn.Module):
    """One DuPL student (docs/method.md#network). :attr:`backbone` knows the encoder's family
    (token maps, patch, width, aux block, input statistics); :attr:`encoder` is its timm model,
    the student's first module."""

    def __init__(self, backbone: str, num_classes: int, aux_layer: Optional[int] = None,
                 pretrained: bool = False, pretrained_path: Optional[str] = None,
                 backbone_args=None, grad_checkpointing: bool = False,
                 input_mean: Optional[Sequence[float]] = None, input_std: Optional[Sequence[float]] = None):
        super().__init__()
        self.backbone = Backbone(backbone, aux_layer, pretrained, pretrained_path, backbone_args,
                                 grad_checkpointing, input_mean, input_std)
        self.encoder = self.backbone.timm
        self.aux_layer = self.backbone.aux_layer
        dim = self.backbone.width
        self.decoder = LargeFOV(dim, num_classes)
        self.classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def token_maps(self, x: torch.Tensor, final: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """``(N, 3, H, W)`` -> final and aux token maps, each ``(N, D, H//p, W//p)`` for the
        encoder's patch ``p`` (``final=False``: ``(None, aux)``, the blocks after the aux block are
        not run)."""
        return self.backbone.token_maps(x, final)

    def forward(self, x: torch.Tensor) -> StudentOutput:
        fmap, aux = self.token_maps(x)
        cls = self.classifier(F.adaptive_max_pool2d(fmap, 1)).flatten(1)
        cls_aux = self.aux_classifier(F.adaptive_max_pool2d(aux, 1)).flatten(1)
        return StudentOutput(cls, self.decoder(fmap), fmap, cls_aux, aux)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder logits only, ``(N, C, H//p, W//p)`` (inference, consistency branch)."""
        return self.decoder(self.token_maps(x)[0])

    def raw_cams(self, x: torch.Tensor, final: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Un-normalised CAMs ``(cam, cam_aux)``, each ``(N, K, H//p, W//p)``: the classifier
        weights applied at every token of the final / aux map, no ReLU. ``final=False`` computes
        the aux CAM only (``cam`` is None) and stops the encoder at the aux block."""
        return self.cams_of_maps(*self.token_maps(x, final))

    def cams_of_maps(self, fmap: Optional[torch.Tensor],
                     aux: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Un-normalised ``(cam, cam_aux)`` of given final and aux token maps (``cam`` None
        without a final map)."""
        cam = None if fmap is None else F.conv2d(fmap, self.classifier.weight)
        return cam, F.conv2d(aux, self.aux_classifier.weight)


class DualStudentNet(nn.Module):
    """Two complete, independent students; no weight sharing (docs/method.md#network)."""

    def __init__(self, backbone: str = paper("backbone"), num_classes: int = paper("num_classes"),
                 aux_layer: Optional[int] = None, pretrained: bool = False,
                 pretrained_path: Optional[str] = None, backbone_args=None,
                 grad_checkpointing: bool = False, input_mean: Optional[Sequence[float]] = None,
                 input_std: Optional[Sequence[float]] = None):
        """``aux_layer`` None: block ``floor(3 * depth / 4)`` (9 of 12, the paper's -3; see
        :func:`model.backbone.default_aux_layer`). ``backbone_args``: timm architecture overrides
        (``"depth=4,embed_dim=192,num_heads=3"``, random weights only). ``input_mean`` /
        ``input_std``: input statistics other than the family's (:func:`model.backbone.input_stats`)."""
        super().__init__()
        self.backbone_name, self.num_classes = backbone, num_classes
        self.backbone_args = backbone_args
        args = (backbone, num_classes, aux_layer, pretrained, pretrained_path, backbone_args,
                grad_checkpointing, input_mean, input_std)
        self.branch1 = Student(*args)
        self.branch2 = Student(*args)
        self.aux_layer = self.branch1.aux_layer

    @property
    def students(self) -> Tuple[Student, Student]:
        return self.branch1, self.branch2

    @property
    def input_stats(self) -> InputStats:
        """The input statistics both students' encoders normalise with."""
        return self.branch1.backbone.input_stats

    def forward(self, x: torch.Tensor, x_aug: Optional[torch.Tensor] = None):
        """Both students on ``x``; with ``x_aug`` also their decoder logits on it.

        Returns ``[StudentOutput, StudentOutput]`` and, when ``x_aug`` is given, the list of the
        two ``(N, C, h', w')`` seg logits of ``x_aug`` as a second element.
        """
        outs = [s(x) for s in self.students]
        if x_aug is None:
            return outs
        return outs, [s.segment(x_aug) for s in self.students]

    def param_groups(self, lr: float, weight_decay: float = paper("wt_decay")) -> List[dict]:
        """The four optimiser groups of docs/method.md#optimisation, both students pooled: backbone parameters
        without / with "norm" in their name (base ``lr``), the four classifier weights and both
        decoders (``10 * lr``). Weight decay on every group, as in the original."""
        params: List[List[nn.Parameter]] = [[], [], [], []]
        for s in self.students:
            for name, p in s.encoder.named_parameters():
                params[1 if "norm" in name else 0].append(p)
            params[2] += [s.classifier.weight, s.aux_classifier.weight]
            params[3] += list(s.decoder.parameters())
        return [{"params": p, "lr": lr * mult, "weight_decay": weight_decay}
                for p, mult in zip(params, (1, 1, 10, 10))]


def load_network(net: DualStudentNet, path_or_state, source: str = "checkpoint") -> None:
    """Load a checkpoint (path, checkpoint object or state dict; this project's or the original's)
    into ``net``, strictly. A checkpoint of another class count or encoder layout is refused in one
    line that says which (the backbone describes both: :meth:`model.backbone.Backbone.foreign_layout`)."""
    if isinstance(path_or_state, str):
        source = path_or_state
        path_or_state = read_checkpoint(path_or_state)
    state = network_state(path_or_state)
    own = net.state_dict()
    if "branch1.encoder.patch_embed.proj.weight" not in state or "branch1.decoder.conv8.weight" not in state:
        raise UserError(f"{source} is not a DuPL network checkpoint (no branch1.encoder / "
                        "branch1.decoder weights)")
    theirs_c = state["branch1.decoder.conv8.weight"].shape[0]
    if theirs_c != net.num_classes:
        raise UserError(f"{source} was trained with {theirs_c} classes but this network has "
                        f"{net.num_classes}; use the script of the dataset it was trained on")
    backbone = net.branch1.backbone
    theirs_b = backbone.foreign_layout(state, "branch1.encoder.")
    if theirs_b is not None:
        raise UserError(f"{source} holds {theirs_b} but --backbone {net.backbone_name} is "
                        f"{backbone.describe()}; pass the backbone it was trained with")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not match the network: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    net.load_state_dict(state, strict=True)
