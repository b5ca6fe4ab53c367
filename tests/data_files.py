"""Stand-in annotation files in the real formats (COCO captions and instances, Flickr30k Entities, COCO panoptic),
with their images, for the tests of the readers, the data sets and the protocols."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COCO_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 58, "name": "hot dog", "supercategory": "food"},
    {"id": 88, "name": "teddy bear", "supercategory": "indoor"},
]


def write_coco(
    folder: Path, captions_42=("A man and a woman walk two dogs past a red car.",)
) -> tuple[Path, Path, Path]:
    """COCO captions and instances files under `folder` and their images (one missing, one without caption);
    returns (captions file, instances file, image folder)."""
    images = [
        {"id": 42, "file_name": "000000000042.jpg", "width": 120, "height": 100},
        {"id": 7, "file_name": "000000000007.jpg", "width": 90, "height": 90},
        {"id": 9, "file_name": "000000000009.jpg", "width": 64, "height": 48},
        {"id": 11, "file_name": "000000000011.jpg", "width": 64, "height": 48},  # no caption: not used
        {"id": 13, "file_name": "000000000013.jpg", "width": 64, "height": 48},  # image file missing
    ]
    (folder / "images").mkdir()
    for image in images[:4]:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 30)).save(folder / "images" / image["file_name"])
    captions = [(42, text) for text in captions_42] + [
        (7, "A boy eats a hot dog next to a teddy bear."),
        (9, "An empty street."),
        (9, "A quiet  road at night."),
        (13, "A cat."),
    ]
    captions_json = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": [
            {"id": 100 + i, "image_id": image_id, "caption": text} for i, (image_id, text) in enumerate(captions)
        ],
    }
    boxes = [
        (42, 1, [60, 0, 20, 40], 0),  # smaller person
        (42, 1, [0, 0, 50, 80], 0),  # larger person
        (42, 18, [10, 70, 20, 20], 0),
        (42, 1, [0, 0, 120, 100], 1),  # crowd: dropped
        (42, 18, [90, 60, 25, 30], 0),
        (42, 18, [100, 5, 2, 2], 0),  # too small
        (42, 3, [30, 50, 40, 30], 0),
        (7, 1, [0, 0, 40, 90], 0),
        (7, 18, [60, 60, 20, 20], 0),  # a dog the caption does not mention ("hot dog" is not a dog)
        (7, 58, [40, 40, 15, 8], 0),
        (7, 88, [50, 0, 30, 40], 0),
    ]
    instances_json = {
        "info": {},
        "licenses": [],
        "images": images,
        "categories": COCO_CATEGORIES,
        "annotations": [
            {
                "id": 500 + i,
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "iscrowd": crowd,
                "area": bbox[2] * bbox[3],
                "segmentation": [],
            }
            for i, (image_id, category, bbox, crowd) in enumerate(boxes)
        ],
    }
    (folder / "captions_train2017.json").write_text(json.dumps(captions_json))
    (folder / "instances_train2017.json").write_text(json.dumps(instances_json))
    return folder / "captions_train2017.json", folder / "instances_train2017.json", folder / "images"


WEDDING = [
    "[/EN#255542/people A bearded man] , and [/EN#255543/people a girl] in [/EN#255550/clothing a red dress] are getting married .",
    "[/EN#255544/people The couple] walks out of [/EN#255549/scene a building] .",
]


WEDDING_XML = """<annotation>
  <filename>65567.jpg</filename>
  <size><width>100</width><height>80</height><depth>3</depth></size>
  <object><name>255542</name><name>255544</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>80</ymax></bndbox></object>
  <object><name>255543</name><name>255544</name>
    <bndbox><xmin>51</xmin><ymin>11</ymin><xmax>90</xmax><ymax>80</ymax></bndbox></object>
  <object><name>255550</name>
    <bndbox><xmin>56</xmin><ymin>41</ymin><xmax>85</xmax><ymax>80</ymax></bndbox></object>
  <object><name>255549</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>255551</name>
    <bndbox><xmin>91</xmin><ymin>1</ymin><xmax>100</xmax><ymax>20</ymax></bndbox></object>
</annotation>
"""


def write_flickr(root: Path, sentences=WEDDING, xml=WEDDING_XML, image_id="65567", image=True) -> Path:
    """One Flickr30k Entities image under `root`: its Sentences, Annotations and (if `image`) its JPEG."""
    for folder in ("Sentences", "Annotations", "flickr30k-images"):
        (root / folder).mkdir(exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
    if image:
        Image.new("RGB", (100, 80), (10, 20, 30)).save(root / "flickr30k-images" / f"{image_id}.jpg")
    return root


PANOPTIC_CATEGORIES = [  # COCO panoptic style: non-contiguous ids, things and stuff
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
    {"id": 5, "name": "airplane", "isthing": 1, "supercategory": "vehicle"},
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky"},
    {"id": 199, "name": "wall-other-merged", "isthing": 0, "supercategory": "wall"},
]


IMAGE_SIZES = {397133: (80, 60), 37777: (60, 100), 252219: (64, 64)}


def segment_rgb(segment_id: int) -> tuple[int, int, int]:
    """The colour a COCO panoptic PNG gives segment `segment_id`."""
    return segment_id % 256, segment_id // 256 % 256, segment_id // 65536


def write_panoptic_standin(tmp_path: Path) -> Path:
    """`annotations/panoptic_val2017.json` + `annotations/panoptic_val2017/*.png` + `val2017/*.jpg` under `tmp_path`.

    Image 397133 (80 x 60): sky (rows 0-19, stuff), wall (rows 20-59, x 0-39, stuff), a person (json box), a crowd
    airplane (kept), a 5 x 5 person (area 25 < 64: left out). Image 37777 (60 x 100): a wall with a 3-pixel sliver of
    it elsewhere (its box spans both), an airplane. Image 252219: a 6 x 6 sky (left out), so the image has no box.
    """
    annotations_dir = tmp_path / "annotations"
    png_dir = annotations_dir / "panoptic_val2017"
    png_dir.mkdir(parents=True)
    (tmp_path / "val2017").mkdir()
    layout = {  # image id -> [(segment id, category, drawn rectangle (x0, y0, x1, y1) inclusive or None, json bbox, crowd)]
        397133: [
            (2000, 187, (0, 0, 79, 19), None, 0),
            (3000, 199, (0, 20, 39, 59), None, 0),
            (4000, 1, (45, 25, 64, 54), [45, 25, 20, 30], 0),
            (5000, 5, (66, 22, 79, 40), [66, 22, 14, 19], 1),
            (6000, 1, (41, 50, 45, 54), [41, 50, 5, 5], 0),
        ],
        37777: [
            (7000, 199, (0, 0, 29, 69), None, 0),
            (7000, 199, (50, 95, 52, 95), None, 0),
            (8000, 5, (30, 10, 59, 49), [30.5, 10, 29.5, 40], 0),
        ],
        252219: [(9000, 187, (0, 0, 5, 5), None, 0)],
    }
    images, annotations = [], []
    for image_id, segments in layout.items():
        width, height = IMAGE_SIZES[image_id]
        photo = Image.new("RGB", (width, height), (90, 140, 200))
        segmentation = Image.new("RGB", (width, height), (0, 0, 0))
        draw_photo, draw_segm = ImageDraw.Draw(photo), ImageDraw.Draw(segmentation)
        infos = {}
        for segment_id, category, rectangle, bbox, crowd in segments:
            draw_segm.rectangle(rectangle, fill=segment_rgb(segment_id))
            draw_photo.rectangle(rectangle, fill=((segment_id // 40) % 256, (category * 37) % 256, 60))
            infos.setdefault(
                segment_id,
                {
                    "id": segment_id,
                    "category_id": category,
                    "iscrowd": crowd,
                    "area": 1,
                    "bbox": bbox
                    or [rectangle[0], rectangle[1], rectangle[2] - rectangle[0] + 1, rectangle[3] - rectangle[1] + 1],
                },
            )
        file_name = f"{image_id:012d}"
        photo.save(tmp_path / "val2017" / f"{file_name}.jpg", quality=95)
        segmentation.save(png_dir / f"{file_name}.png")
        images.append({"id": image_id, "file_name": f"{file_name}.jpg", "width": width, "height": height})
        annotations.append(
            {"image_id": image_id, "file_name": f"{file_name}.png", "segments_info": list(infos.values())}
        )
    path = annotations_dir / "panoptic_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": PANOPTIC_CATEGORIES}))
    return path
