"""The settings of DuPL and its runs, declared once: the table every script, the schedule and the
help texts derive from.

Each :class:`Setting` is one row: its name (the flag ``--name`` of the training scripts and, for
the method's settings, the field of :class:`model.schedule.DuPLConfig`), the paper's VOC value, the
paper's COCO value where it differs, the values of other datasets (``others``; a dataset without
its own value takes VOC's), the help text and the range a value must lie in. Rows with
``flag=False`` are paper settings that no training flag changes (the per-class threshold targets,
COCO's late boundaries, the evaluation scales); rows with ``only`` are flags of the datasets in
one folder layout (``voc`` or ``coco``: :data:`datasets.layout.DATASETS`). The training parser
(:func:`engine.train_args.get_args_parser`) renders the rows in order, the range checks
(:func:`engine.train_args.check_args`) follow ``valid``, and ``DuPLConfig``'s fields are the rows
with ``method=True``. :data:`LOSS_TERMS` declares the terms of the loss beside their weights.

A new hyperparameter of the method is one row here with ``method=True``; the step reads it as
``cfg.<name>`` (docs/development.md#changing-the-method).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from utils.cli import NON_NEGATIVE, OPEN_UNIT, POSITIVE, UNIT, Range
from utils.precision import AMP_HELP

DATASETS = ("voc", "coco")
SAME = object()          # a COCO value equal to VOC's


@dataclass(frozen=True)
class Setting:
    """One setting: ``voc`` is the paper's VOC value (and the default of a dataset without its own);
    ``coco`` the paper's COCO value where it differs; ``others`` pairs ``(dataset, value)`` of
    other datasets. ``kind`` is how the flag parses: ``int``,
    ``float``, ``str``, ``bool`` (a ``--x/--no-x`` switch) or ``"numbers"`` (one or more numbers,
    space- or comma-separated); by default the type of the VOC value (``str`` for None)."""
    name: str
    voc: Any
    help: str
    coco: Any = SAME
    group: str = "DuPL"
    kind: Any = None
    valid: Optional[Range] = None
    method: bool = False          # a field of model.schedule.DuPLConfig
    flag: bool = True             # a flag of the training scripts
    only: Optional[str] = None    # a flag of the datasets in this folder layout only (voc, coco)
    aliases: Tuple[str, ...] = ()
    others: Tuple[Tuple[str, Any], ...] = ()
    choices: Optional[Tuple[Any, ...]] = None   # the values a flag accepts, where they are few

    def value(self, dataset: str) -> Any:
        """The value for ``dataset``: its own in ``others``, else the paper's COCO value for
        ``coco``, else the paper's VOC value."""
        own = dict(self.others)
        if dataset in own:
            return own[dataset]
        return self.voc if dataset != "coco" or self.coco is SAME else self.coco

    @property
    def parse_kind(self):
        if self.kind is not None:
            return self.kind
        return str if self.voc is None else ("numbers" if isinstance(self.voc, tuple) else type(self.voc))


S = Setting
VOC_HIGH_TARGETS = (0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
                    0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55)

SETTINGS: Tuple[Setting, ...] = (
    # ---- data
    S("data_folder", None, "the VOC2012 folder (JPEGImages/, SegmentationClassAug/, ...; required)",
      group="data", only="voc"),
    S("img_folder", None, "COCO image folder holding train2014/ and val2014/ (required)", group="data",
      only="coco", aliases=("--data_folder",)),
    S("label_folder", None, "COCO mask folder holding train2014/ and val2014/ (default: "
      "SegmentationClass inside or next to --img_folder)", group="data", only="coco"),
    S("list_folder", None, "split lists and labels (default: <data>_lists, derived from the data when "
      "missing)", group="data"),
    S("train_set", "train_aug", "training split", coco="train", group="data"),
    S("val_set", "val", "validation split", coco="val_part", group="data"),
    S("num_classes", 21, "classes incl. background", coco=81, group="data", method=True),
    S("crop_size", 448, "training crop (pixels)", group="data", valid=POSITIVE),
    S("scales", (0.5, 2.0), "random rescale range: smallest and largest factor", group="data"),
    S("num_workers", 10, "loader workers per GPU", coco=16, group="data", valid=NON_NEGATIVE),
    S("pin_memory", False, "pin loader memory", coco=True, group="data"),
    S("mirror_box_on_flip", False, "mirror img_box with COCO's second flip (the original does not)",
      group="data", only="coco"),
    # ---- model
    S("backbone", "deit_base_patch16_224", "timm ViT-family encoder NAME[.TAG]: ViT/DeiT, DINOv2, DINOv3, "
      "CLIP, SigLIP, EVA-02", group="model"),
    S("pretrained", True, "start from timm's pretrained weights (the tag given, else the family's default)",
      group="model"),
    S("pretrained_path", None, "local pretrained weights file (no download)", group="model"),
    S("backbone_args", None, "timm architecture overrides KEY=VALUE,... (depth, embed_dim, num_heads, "
      "mlp_ratio), e.g. depth=4,embed_dim=192,num_heads=3; random weights only", group="model"),
    S("aux_layer", None, "block of the aux classifier (default: floor(3/4 depth), block 9 of 12)",
      group="model", kind=int),
    S("grad_checkpointing", False, "recompute each encoder block in the backward pass (less memory, slower)",
      group="model"),
    S("input_mean", None, "R,G,B mean (0-1 units) the images are normalised with (default: the backbone's: "
      "ImageNet's for ViT/DeiT, else the mean of timm's config of the weights' tag)", group="model",
      kind="numbers"),
    S("input_std", None, "R,G,B std of the normalisation (default: the backbone's, as --input_mean)",
      group="model", kind="numbers"),
    # ---- optimisation
    S("samples_per_gpu", 2, "images per GPU per step", coco=1, group="optimisation", valid=POSITIVE,
      aliases=("--spg",)),
    S("global_batch", 4, "images per optimiser step in the paper's runs (2 GPUs x 2 on VOC, 8 x 1 on COCO)",
      coco=8, group="optimisation", flag=False),
    S("grad_accum", 1, "micro-batches per optimiser step (keeps the paper's global batch on fewer GPUs)",
      group="optimisation", valid=POSITIVE),
    S("max_iters", 20000, "optimiser steps", coco=80000, group="optimisation", valid=POSITIVE, method=True),
    S("lr", 6e-5, "backbone learning rate (heads x10)", group="optimisation", valid=POSITIVE),
    S("warmup_iters", 1500, "linear warm-up steps", group="optimisation", valid=NON_NEGATIVE),
    S("warmup_lr", 1e-6, "warm-up start ratio", group="optimisation", valid=Range(0, 1, lo_open=True)),
    S("wt_decay", 1e-2, "AdamW weight decay", group="optimisation", valid=NON_NEGATIVE),
    S("power", 0.9, "poly decay power", group="optimisation", valid=POSITIVE),
    S("amp", False, AMP_HELP, group="optimisation"),
    S("seed", 0, "random seed (rank r uses seed + r)", group="optimisation"),
    # ---- DuPL: the method (model.schedule.DuPLConfig)
    S("cam_iters", 2000, "segmentation starts after", coco=8000, method=True),
    S("gmm_iters", 8000, "GMM filter + consistency from", coco=32000, method=True),
    S("cam_scales", (1.0, 0.5, 1.5), "CAM scales (with flips)", method=True),
    S("high_thre", 0.70, "start of the high threshold", coco=0.65, valid=OPEN_UNIT, method=True),
    S("low_thre", 0.25, "low (background) threshold", valid=OPEN_UNIT, method=True),
    S("bkg_thre", 0.50, "validation CAM threshold", coco=0.45, valid=OPEN_UNIT, method=True),
    S("w_ptc", 0.2, "PTC loss weight", valid=NON_NEGATIVE, method=True),
    S("w_seg", 0.2, "segmentation loss weight", valid=NON_NEGATIVE, method=True),
    S("w_dis", 0.1, "discrepancy loss weight", coco=0.05, valid=NON_NEGATIVE, method=True),
    S("w_reg", 0.05, "consistency loss weight", valid=NON_NEGATIVE, method=True),
    S("gamma", 0.95, "GMM noisy posterior threshold", valid=OPEN_UNIT, method=True),
    S("gmm_valid_thre", 1.0, "min gap of the GMM means", valid=NON_NEGATIVE, method=True),
    S("conf_thre", 0.9, "consistency confidence threshold", valid=UNIT, method=True),
    S("aug_scale", 0.75, "scale of the strong view", valid=POSITIVE, method=True),
    S("ptc_box_in_pixels", True, "apply img_box in pixels to the token labels as the original does (a quirk "
      "of the original); --no-ptc_box_in_pixels scales it to tokens", method=True),
    # paper settings no flag changes (docs/method.md#thresholds, #losses-and-phases)
    S("high_targets", VOC_HIGH_TARGETS, "per-class end of the high threshold (one value: every class)",
      coco=(0.55,), flag=False, method=True),
    S("late_factor", None, "COCO's late boundaries (PTC on, threshold descent, aux-CAM labels until) "
      "at round(late_factor * cam_iters); None: VOC's, from the start / cam_iters",
      coco=1.5, flag=False, method=True, kind=float),
    S("reg_from_gmm_iter", False, "weight the consistency loss already at n == gmm_iters", coco=True,
      flag=False, method=True),
    # ---- run
    S("work_dir", None, "run folder (default: work_dirs/<dataset>/<time>)", group="run"),
    S("log_iters", 200, "log every", group="run", valid=POSITIVE),
    S("eval_iters", 2000, "validate + checkpoint every", coco=4000, group="run", valid=POSITIVE),
    S("resume", None, "checkpoint to continue from, in its own run folder unless --work_dir is given; "
      "'auto': the checkpoint in --work_dir if there is one, else a fresh run there", group="run"),
    S("tensorboard", True, "write tensorboard scalars and images", group="run"),
    S("cpu", False, "run on the CPU; without it a run that finds no usable GPU stops", group="run"),
    S("deterministic", False, "cuDNN deterministic kernels (the original's setting; slower) instead of "
      "cuDNN benchmark mode", group="run"),
    # ---- evaluation, inference and visualisation (docs/usage.md)
    S("eval_scales", (1.0, 1.5, 1.25), "inference scales (with flips)", coco=(1.0, 1.25, 1.5),
      group="evaluation", flag=False),
    S("checkpoint_aux_layer", -3, "aux block of a checkpoint that does not record one (the original's)",
      coco=9, group="evaluation", flag=False),
)

BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


def paper(name: str, dataset: str = "voc") -> Any:
    """The paper's value of setting ``name`` for ``dataset``."""
    return BY_NAME[name].value(dataset)


def training_flags(layout: str) -> Tuple[Setting, ...]:
    """The rows that are training flags of a dataset in folder layout ``layout`` (``voc`` or
    ``coco``), in the table's order."""
    return tuple(s for s in SETTINGS if s.flag and s.only in (None, layout))


def method_settings() -> Tuple[Setting, ...]:
    """The rows that are fields of :class:`model.schedule.DuPLConfig`."""
    return tuple(s for s in SETTINGS if s.method)


def default_model(dataset: str) -> Dict[str, Any]:
    """The network a script builds for a checkpoint that records no settings of its own."""
    return {"backbone": paper("backbone", dataset), "num_classes": paper("num_classes", dataset),
            "aux_layer": paper("checkpoint_aux_layer", dataset)}


# ---- the loss terms: each declared once; its weight is the row named by ``weight``
@dataclass(frozen=True)
class LossTerm:
    """One term of the DuPL loss. ``on(cfg, n)``: whether iteration ``n`` of the schedule ``cfg``
    (:class:`model.schedule.DuPLConfig`) weights it (the weight is then the setting ``weight``, or
    1 without one); ``trains``: the parts of a student
    (:class:`model.network.Student` attributes) whose parameters it reaches; ``log_name``: its
    field in train.log (the original's names, ``sim_loss`` for the discrepancy)."""
    name: str
    weight: Optional[str]
    on: Callable[[Any, int], bool]
    trains: Tuple[str, ...]
    log_name: str


LOSS_TERMS: Tuple[LossTerm, ...] = (
    LossTerm("cls", None, lambda c, n: True, ("encoder", "classifier", "aux_classifier"), "cls_loss"),
    LossTerm("ptc", "w_ptc", lambda c, n: n > c.ptc_after, ("encoder",), "ptc_loss"),
    LossTerm("seg", "w_seg", lambda c, n: n > c.cam_iters, ("encoder", "decoder"), "seg_loss"),
    LossTerm("dis", "w_dis", lambda c, n: n > c.dis_after, ("encoder",), "sim_loss"),
    LossTerm("reg", "w_reg", lambda c, n: n >= c.gmm_iters if c.reg_from_gmm_iter else n > c.gmm_iters,
             ("encoder", "decoder"), "reg_loss"),
)
LOSS_NAMES = tuple(t.name for t in LOSS_TERMS)
STUDENT_PARTS = ("encoder", "classifier", "aux_classifier", "decoder")
