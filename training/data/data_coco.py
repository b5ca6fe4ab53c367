"""COCO: `captions_*.json` (five captions per image) with `instances_*.json` (boxes with categories).

The annotation files are parsed once into a compact index (numpy arrays and packed strings); images are opened in
`__getitem__`. Crowd boxes (`iscrowd=1`) are dropped; COCO's [x, y, w, h] boxes become [x1, y1, x2, y2].

Each instance box is linked to a noun phrase of the sampled caption that names its category (`coco_synonyms`): a
phrase naming a category links the largest still-unlinked box of that category, a plural phrase ("two dogs") all of
them. Boxes left unlinked are kept (GR uses them). Noun phrases come from spaCy (`training/data/phrases.py`), which is slow:
they are either extracted lazily and memoised per process, or computed for all captions once into a cache file
(`phrase_cache=`; written atomically, reused while the captions and the pipeline are unchanged). In distributed
training build the data set on the main process first (`accelerator.main_process_first()`) so it alone writes the cache.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import xywh_to_xyxy
from plumbing.atomic_files import write_bytes_atomic
from plumbing.json_files import read_json

from .coco_synonyms import COCO_SYNONYMS, build_synonym_index
from .data_common import PackedStrings, Region, RegionDataset, RegionSample, choose_caption
from .phrases import NounPhrase, PhraseExtractor

PHRASE_CACHE_VERSION = 1
MEMO_LIMIT = 100_000  # captions whose phrases a process keeps without a cache file (then it starts afresh)


class CategoryMatcher:
    """Which categories a noun phrase names: multi-word expressions found in its text take precedence (so "hot
    dogs" is not "dog"), else its head lemma is looked up among the single words."""

    def __init__(self, synonyms: dict[str, tuple[str, ...]] = COCO_SYNONYMS):
        self.words, expressions = build_synonym_index(synonyms)
        self.expressions = [
            (re.compile(rf"(?<!\w){re.escape(expression)}(?:s|es)?(?!\w)"), categories)
            for expression, categories in sorted(expressions.items())
        ]

    def __call__(self, phrase_text: str, head_lemma: str) -> list[str]:
        text = " ".join(phrase_text.lower().split())
        found: set[str] = set()
        for pattern, categories in self.expressions:
            if pattern.search(text):
                found |= categories
        if not found:
            found = self.words.get(head_lemma.lower(), set())
        return sorted(found)


def link_boxes_to_phrases(
    phrases: Sequence[NounPhrase],
    box_categories: Sequence[str | None],
    box_areas: Sequence[float],
    matcher: CategoryMatcher,
) -> list[tuple[int, int] | None]:
    """The phrase span linked to each box (None: unlinked), phrases taken in caption order; a box whose category is
    None is never linked."""
    links: list[tuple[int, int] | None] = [None] * len(box_categories)
    for phrase in phrases:
        for category in matcher(phrase.text, phrase.head_lemma):
            free = [i for i, c in enumerate(box_categories) if c == category and links[i] is None]
            if not free:
                continue
            free.sort(key=lambda i: (-box_areas[i], i))
            for i in free if phrase.plural else free[:1]:
                links[i] = (phrase.start, phrase.end)
            break
    return links


def read_coco_json(path: Path) -> dict:
    """A COCO annotation file's object (captions or instances)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO annotation object, got {type(data).__name__}")
    return data


class CocoRegionDataset(RegionDataset):
    """COCO images with one sampled caption each and their instance boxes linked to the caption's noun phrases."""

    def __init__(
        self,
        captions_file: str | Path,
        instances_file: str | Path,
        image_dir: str | Path,
        *,
        phrase_cache: str | Path | None = None,
        synonyms: dict[str, tuple[str, ...]] = COCO_SYNONYMS,
        **options,
    ):
        super().__init__(**options)
        self.captions_file, self.instances_file = Path(captions_file), Path(instances_file)
        self.image_dir = Path(image_dir)
        self.matcher = CategoryMatcher(synonyms)
        self._build_index(read_coco_json(self.captions_file), read_coco_json(self.instances_file))
        self._extractor: PhraseExtractor | None = None
        self._memo: dict[int, list[NounPhrase]] = {}
        self._cached_phrases: dict[str, np.ndarray] | None = None
        if phrase_cache is not None:
            self._cached_phrases = self._load_or_build_phrase_cache(Path(phrase_cache))

    def _build_index(self, captions_json: dict, instances_json: dict) -> None:
        where = str(self.captions_file)
        try:
            file_names = {int(image["id"]): str(image["file_name"]) for image in captions_json["images"]}
            captions_by_image: dict[int, list[str]] = defaultdict(list)
            for annotation in sorted(captions_json["annotations"], key=lambda a: int(a["id"])):
                captions_by_image[int(annotation["image_id"])].append(" ".join(str(annotation["caption"]).split()))
            where = str(self.instances_file)
            categories = {int(c["id"]): str(c["name"]) for c in instances_json["categories"]}
            boxes_by_image: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
            for annotation in sorted(instances_json["annotations"], key=lambda a: int(a["id"])):
                if annotation.get("iscrowd", 0):
                    continue
                boxes_by_image[int(annotation["image_id"])].append(
                    (xywh_to_xyxy(annotation["bbox"]), int(annotation["category_id"]))
                )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: not a COCO annotation file ({type(error).__name__}: {error})") from None

        self.category_names = [categories[key] for key in sorted(categories)]
        category_index = {key: i for i, key in enumerate(sorted(categories))}
        image_ids = sorted(i for i in file_names if captions_by_image.get(i))
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.file_names = PackedStrings([file_names[i] for i in image_ids])
        all_captions = [caption for i in image_ids for caption in captions_by_image[i]]
        self.captions = PackedStrings(all_captions)
        self.caption_offsets = np.cumsum([0] + [len(captions_by_image[i]) for i in image_ids], dtype=np.int64)
        self.box_offsets = np.cumsum([0] + [len(boxes_by_image.get(i, [])) for i in image_ids], dtype=np.int64)
        pairs = [pair for i in image_ids for pair in boxes_by_image.get(i, [])]
        self.boxes = np.asarray([box for box, _ in pairs], dtype=np.float32).reshape(-1, 4)
        unknown = sorted({c for _, c in pairs if c not in category_index})
        if unknown:
            raise ValueError(f"{self.instances_file}: annotations use category ids {unknown} not in 'categories'")
        self.box_categories = np.asarray([category_index[c] for _, c in pairs], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self, index: int) -> str:
        return str(self.image_dir / self.file_names[index])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_extractor"] = None  # each worker process loads spaCy itself, when it first needs it
        return state

    # Noun phrases of caption number `j` (into self.captions).
    def phrases_of(self, j: int) -> list[NounPhrase]:
        if self._cached_phrases is not None:
            cache = self._cached_phrases
            caption = self.captions[j]
            begin, end = cache["offsets"][j], cache["offsets"][j + 1]
            return [
                NounPhrase(int(s), int(e), caption[s:e], str(cache["heads"][k]), bool(cache["plural"][k]))
                for k, (s, e) in zip(range(begin, end), cache["spans"][begin:end])
            ]
        if j not in self._memo:
            if self._extractor is None:
                self._extractor = PhraseExtractor()
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            self._memo[j] = self._extractor([self.captions[j]])[0]
        return self._memo[j]

    def _cache_key(self) -> str:
        extractor = PhraseExtractor()
        meta = extractor.nlp.meta
        digest = hashlib.sha256(self.captions.buffer.tobytes())
        digest.update(self.captions.offsets.tobytes())
        return f"v{PHRASE_CACHE_VERSION}:{meta.get('name')}-{meta.get('version')}:{digest.hexdigest()}"

    def _load_or_build_phrase_cache(self, path: Path) -> dict:
        key = self._cache_key()
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) == key:
                    return {name: stored[name] for name in ("offsets", "spans", "heads", "plural")}
        extractor = PhraseExtractor()
        texts = (self.captions[j] for j in range(len(self.captions)))
        counts, spans, heads, plural = [], [], [], []
        for phrases in tqdm(extractor.iter(texts), total=len(self.captions), desc="noun phrases", unit="caption"):
            counts.append(len(phrases))
            spans.extend((p.start, p.end) for p in phrases)
            heads.extend(p.head_lemma for p in phrases)
            plural.extend(p.plural for p in phrases)
        arrays = {
            "key": np.asarray(key),
            "offsets": np.cumsum([0] + counts, dtype=np.int64),
            "spans": np.asarray(spans, dtype=np.int32).reshape(-1, 2),
            "heads": np.asarray(heads, dtype=str),
            "plural": np.asarray(plural, dtype=bool),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomic(path, buffer.getvalue())
        return {name: arrays[name] for name in ("offsets", "spans", "heads", "plural")}

    def load(self, index: int, rng: np.random.Generator) -> RegionSample:
        first, last = self.caption_offsets[index], self.caption_offsets[index + 1]
        j = int(first) + choose_caption(range(last - first), rng)
        caption = self.captions[j]
        begin, end = self.box_offsets[index], self.box_offsets[index + 1]
        boxes = self.boxes[begin:end].tolist()
        categories = [self.category_names[c] for c in self.box_categories[begin:end]]
        areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
        # Boxes too small to be kept must not take a phrase a kept box could have.
        linkable = [
            c if min(x2 - x1, y2 - y1) >= self.min_box_size else None for c, (x1, y1, x2, y2) in zip(categories, boxes)
        ]
        links = link_boxes_to_phrases(self.phrases_of(j), linkable, areas, self.matcher)
        regions = [
            Region(tuple(box), span, k, category, category)
            for k, (box, span, category) in enumerate(zip(boxes, links, categories))
        ]
        return self.make_sample(
            self.image_dir / self.file_names[index], str(int(self.image_ids[index])), caption, regions
        )
