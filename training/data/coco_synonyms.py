"""Words that name each of COCO's 80 object categories in captions, for linking instance boxes to noun phrases.

Single words are compared with a noun phrase's head lemma (so "men" matches "man"); entries of several words are
looked up in the phrase's text (lower-cased, so "a hot dog" is a hot dog, not a dog). Each category's own name is
always included.
"""

from __future__ import annotations

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "player",
               "guy", "lady", "gentleman", "adult", "teenager", "teen", "skier", "skateboarder", "snowboarder",
               "surfer", "rider", "batter", "catcher", "pitcher", "umpire", "officer", "policeman", "worker", "chef",
               "cook", "crowd", "family", "couple", "someone", "tourist", "pedestrian", "spectator", "athlete",
               "biker", "cyclist", "student", "soldier", "daughter", "son", "mother", "father", "mom", "dad",
               "grandmother", "grandfather", "husband", "wife", "bride", "groom", "friend", "individual", "human",
               "youngster", "infant", "businessman", "farmer", "fan", "tennis player", "baseball player"),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "automobile", "sedan", "taxi", "cab", "suv", "vehicle", "jeep", "van"),
    "motorcycle": ("motorcycle", "motorbike", "scooter", "moped", "dirt bike"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "jetliner", "aeroplane"),
    "bus": ("bus", "trolley", "double decker"),
    "train": ("train", "locomotive", "engine", "railcar", "tram", "subway"),
    "truck": ("truck", "pickup", "lorry", "firetruck", "fire truck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "vessel", "raft"),
    "traffic light": ("traffic light", "stop light", "stoplight", "traffic signal", "street light"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench", "pew"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan", "eagle", "crow", "owl",
             "chicken", "hen", "rooster", "sparrow", "penguin"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "canine"),
    "horse": ("horse", "pony", "foal", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "ox", "steer"),
    "elephant": ("elephant",),
    "bear": ("bear", "polar bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "rucksack", "knapsack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "bag"),
    "tie": ("tie", "necktie", "bowtie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "baggage"),
    "frisbee": ("frisbee", "disc"),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "baseball", "football", "soccer ball", "tennis ball", "basketball", "volleyball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "board"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "glass"),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "sub", "burger", "hamburger"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa", "loveseat"),
    "potted plant": ("potted plant", "plant", "houseplant", "flower pot"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk"),
    "toilet": ("toilet",),
    "tv": ("tv", "television", "monitor", "screen"),
    "laptop": ("laptop", "computer", "notebook"),
    "mouse": ("mouse",),
    "remote": ("remote", "controller", "remote control"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone", "mobile phone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book", "novel"),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor"),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "dryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}


def build_synonym_index(synonyms: dict[str, tuple[str, ...]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(single word -> categories, multi-word expression -> categories), every category also under its own name."""
    words: dict[str, set[str]] = {}
    expressions: dict[str, set[str]] = {}
    for category, names in synonyms.items():
        for name in {category, *names}:
            name = " ".join(name.lower().split())
            (expressions if " " in name else words).setdefault(name, set()).add(category)
    return words, expressions
