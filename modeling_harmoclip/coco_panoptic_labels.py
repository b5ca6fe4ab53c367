"""The default vocabulary of the `image-segmentation` pipeline when it is called with an image alone: COCO panoptic's
133 class names (80 "thing" and 53 "stuff" classes, in the order of `panoptic_coco_categories.json`, as COCO panoptic
models such as Mask2Former's name them in `id2label`).

The pipeline returns these names as labels, and prompts the text tower with `prompt_name(name)`: the name without
COCO's "-merged", "-other" and "-stuff" suffixes and with "-" read as a space ("wall-other-merged" -> "wall"), the
cleaned names open-vocabulary segmenters prompt with.
"""

from __future__ import annotations

COCO_PANOPTIC_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
COCO_PANOPTIC_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)  # fmt: skip
COCO_PANOPTIC_LABELS = COCO_PANOPTIC_THINGS + COCO_PANOPTIC_STUFF

_SUFFIXES = ("-merged", "-other", "-stuff")


def prompt_name(name: str) -> str:
    """The words a COCO panoptic class name stands for: "sky-other-merged" -> "sky", "floor-wood" -> "floor wood"."""
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name.replace("-", " ")


__all__ = ["COCO_PANOPTIC_THINGS", "COCO_PANOPTIC_STUFF", "COCO_PANOPTIC_LABELS", "prompt_name"]
