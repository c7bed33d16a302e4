"""Convert VOC test predictions into the PNGs the official evaluation server expects."""
import sys


def main() -> None:
    print("error: convert_voc_rgb.py is not implemented yet", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
