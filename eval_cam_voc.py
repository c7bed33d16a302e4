"""CAM and pseudo-label evaluation of a DuPL checkpoint on PASCAL VOC 2012.

    python eval_cam_voc.py --data_folder VOC2012 --model_path CKPT [--infer_set train] [--crf]
    python -m torch.distributed.run --nproc_per_node=N eval_cam_voc.py ...        # sharded

Multi-scale + flip CAMs and aux CAMs of both students (the training-time rule), their mIoU over
a sweep of background thresholds, PAR-refined pseudo labels and optionally CRF-refined ones;
results.json / results.txt in --work_dir. The evaluation itself is `engine/cam_evaluation.py`.
"""
import sys

from engine.cam_evaluation import evaluate_cams, get_args_parser
from utils.errors import exit_on_user_error


@exit_on_user_error
def run(argv=None):
    return evaluate_cams(get_args_parser("voc").parse_args(argv), "voc")


if __name__ == "__main__":
    run(sys.argv[1:])
