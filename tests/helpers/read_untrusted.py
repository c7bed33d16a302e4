"""Read one downloaded file the way the scripts do: ``KIND PATH`` with KIND one of checkpoint,
model (checkpoint + the settings evaluation reads from it), labels (a list folder's image-level
labels), list, image, mask, pretrained (--pretrained_path of a DeiT-tiny). Exit 2 with one ``error:`` line when it is refused."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from utils.errors import exit_on_user_error  # noqa: E402


@exit_on_user_error
def main(argv):
    kind, path = argv
    if kind in ("checkpoint", "model"):
        from utils.checkpoint import read_checkpoint
        obj = read_checkpoint(path)
        if kind == "model":
            from engine.run_state import model_settings
            model_settings(obj, None, None, None, {"backbone": "deit_tiny_patch16_224",
                                                   "num_classes": 21, "aux_layer": -3}, path)
    elif kind == "pretrained":
        from model.backbone import Backbone
        Backbone("deit_tiny_patch16_224", pretrained_path=path)
    elif kind == "labels":
        from datasets.lists import load_labels
        load_labels(path)
    elif kind == "list":
        from datasets.lists import read_list
        read_list(path)
    elif kind == "image":
        from datasets.readers import read_image
        read_image(path)
    elif kind == "mask":
        from datasets.readers import read_mask
        read_mask(path, 21)
    else:
        raise SystemExit(f"unknown kind {kind}")
    print("read")


if __name__ == "__main__":
    main(sys.argv[1:])
