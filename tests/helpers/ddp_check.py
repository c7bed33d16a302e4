"""Run under torch.distributed.run by tests/test_train.py: one DDP training step (the engine's
TrainingStep wrapped by DistributedDataParallel) and a sharded validation on a tiny model; rank 0
writes what the test compares to a JSON file."""
import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datasets.layout import voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from model.dupl import Batch
from model.network import DualStudentNet
from model.par import PAR
from model.schedule import paper_config
from utils.distributed import init_distributed
from engine.optim import PolyWarmupAdamW
from engine.train_step import TrainingStep, release_idle_gradients
from engine.validation import validate


def main(data_folder: str, list_folder: str, out_path: str, step: int) -> None:
    info = init_distributed()
    layout = voc_layout(data_folder)
    if info.rank == 0:
        ensure_lists(layout, list_folder, ["train_aug", "val"])
    dist.barrier()
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", cam_iters=1, gmm_iters=2, max_iters=10)
    model = DistributedDataParallel(TrainingStep(net, cfg))
    initial_decoders = [p.detach().clone() for s in net.students for p in s.decoder.parameters()]
    opt = PolyWarmupAdamW(net.param_groups(1e-3), lr=1e-3, max_iters=10, warmup_iters=1)
    torch.manual_seed(100 + info.rank)          # different data on each rank
    train = TrainDataset(layout, list_folder, "train_aug", TrainAugmentation(48, (0.5, 2.0)))
    batch = [train[i] for i in range(info.rank * 2, info.rank * 2 + 2)]
    images = torch.stack([b[1] for b in batch])
    labels = torch.stack([b[2] for b in batch])
    boxes = torch.stack([b[3] for b in batch])
    out = model(Batch(images, labels, boxes), step, PAR(), torch.Generator().manual_seed(info.rank))
    out.loss.backward()
    release_idle_gradients(net, out.active)
    opt.step()
    decoders = [p for s in net.students for p in s.decoder.parameters()]
    untouched = all(torch.equal(p, p0) for p, p0 in zip(decoders, initial_decoders)) and \
        not any(p in opt.state for p in decoders)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    val = EvalDataset(layout, list_folder, "val")
    result = validate(net, val, info.device, info.rank, info.world_size, crop_size=48, num_workers=0)
    if info.rank == 0:
        torch.save(net.state_dict(), out_path + ".pth")
        with open(out_path, "w") as f:
            json.dump({"identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                       "decoders_untouched": untouched,
                       "miou": {k: v["miou"] for k, v in result["scores"].items()},
                       "iou": {k: [None if x != x else x for x in v["iou"].tolist()]
                               for k, v in result["scores"].items()},
                       "f1": result["f1"], "num_images": result["num_images"]}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
