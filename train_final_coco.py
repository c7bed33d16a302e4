"""Train DuPL on MS COCO 2014."""
import sys


def main() -> None:
    print("error: train_final_coco.py is not implemented yet", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
