"""Distributed multi-scale + CRF evaluation of a DuPL checkpoint on MS COCO 2014."""
import sys


def main() -> None:
    print("error: eval_seg_coco_ddp.py is not implemented yet", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
