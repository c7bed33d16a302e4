"""The training data of a run: the dataset folders and splits (:func:`build_data`) and an endless,
distributed-sampled stream of batches (:class:`BatchStream`)."""
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from datasets.layout import layout_kind
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from utils.input_stats import InputStats
from model.dupl import Batch

from utils.distributed import DistInfo
from utils.errors import UserError, message
from utils.stop import ignore_stop_signals

from .script_common import split_lists


def build_data(args, dataset: str, info: DistInfo, logger, stats: InputStats):
    """The dataset layout, the training set (with the training augmentation) and the validation
    set of the flags, both normalised with the encoder's input statistics ``stats``; the main rank
    derives missing split lists first."""
    layout, list_folder = split_lists(args, dataset, [args.train_set, args.val_set], info.is_main, logger.info)
    aug = TrainAugmentation(args.crop_size, tuple(args.scales), coco_flip=layout_kind(dataset) == "coco",
                            mirror_box_on_coco_flip=getattr(args, "mirror_box_on_flip", False),
                            stats=stats)
    train_set = TrainDataset(layout, list_folder, args.train_set, aug)
    val_set = EvalDataset(layout, list_folder, args.val_set, stats=stats)
    return layout, train_set, val_set


class BatchStream:
    """Endless batches from a distributed-sampled loader; the sampler reshuffles every epoch
    (same epoch number on every rank, so the shards stay disjoint)."""

    def __init__(self, dataset, args, info: DistInfo, start_step: int):
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                          shuffle=True, seed=args.seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=args.samples_per_gpu, sampler=self.sampler,
                                 num_workers=args.num_workers, drop_last=True,
                                 pin_memory=args.pin_memory and info.device.type == "cuda",
                                 persistent_workers=args.num_workers > 0,
                                 worker_init_fn=ignore_stop_signals,   # the rank handles stop requests
                                 prefetch_factor=4 if args.num_workers > 0 else None)
        if len(self.loader) == 0:
            raise UserError(f"the training split has {len(dataset)} images: fewer than one batch of "
                            f"{args.samples_per_gpu} per GPU on {info.world_size} GPU(s)")
        self.epoch = (start_step * args.grad_accum) // len(self.loader)
        self._iter = None

    def __next__(self):
        if self._iter is None:
            self.sampler.set_epoch(self.epoch)
            self._iter = iter(self.loader)
        try:
            return next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._iter = None
            return next(self)
        except UserError as exc:
            # a loader worker re-raises the reader's error with its traceback: keep the message
            raise UserError(message(exc)) from None

    def next_batch(self, device: torch.device) -> Batch:
        """The next batch, on ``device``."""
        _, images, cls_label, img_box = next(self)
        max_present = int(cls_label.sum(1).max())   # CPU tensor from the loader: no device sync
        return Batch(images.to(device, non_blocking=True), cls_label.to(device, non_blocking=True),
                     img_box.to(device, non_blocking=True), max_present)
