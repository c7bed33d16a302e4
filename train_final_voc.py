"""Train DuPL on PASCAL VOC 2012."""
import sys


def main() -> None:
    print("error: train_final_voc.py is not implemented yet", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
