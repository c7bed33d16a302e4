"""Multi-scale + CRF evaluation of a DuPL checkpoint on PASCAL VOC 2012 (docs/method.md#evaluation).

    python eval_seg_voc.py --data_folder VOC2012 --model_path work_dirs/voc/.../checkpoint.pth
    python eval_seg_voc.py --data_folder VOC2012 --model_path CKPT --infer_set test   # server
    python -m torch.distributed.run --nproc_per_node=N eval_seg_voc.py ...            # sharded

Scales 1.0/1.5/1.25 with flips, merged by max at full resolution; scores of both students and
their ensemble without CRF; both students' network outputs are saved before resizing
(``logits/<id>.npz``, rebuilt by ``engine.inference.load_logits``), the ``--branch`` prediction
(default: ensemble) as PNGs, refined by dense CRF in ``--crf_workers`` processes. ``--help`` lists
all flags. The evaluation itself is ``engine/evaluation.py``.
"""
import sys

from utils.errors import exit_on_user_error
from engine.evaluation import evaluate, get_args_parser


@exit_on_user_error
def run(argv=None):
    return evaluate(get_args_parser("voc").parse_args(argv), "voc")


if __name__ == "__main__":
    run(sys.argv[1:])
