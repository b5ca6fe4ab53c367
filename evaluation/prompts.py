"""Class-name prompts of the reference protocols: ViLD's hand-crafted ensemble as FineCLIP and CLIPSelf build their
COCO panoptic class embeddings.

FineCLIP's `tools/generate_text_embeddings.py` (`build_text_embedding_lvis`, the function its `__main__` calls for
`panoptic_val2017.json`) fills 63 templates with the class name lower-cased, `_` turned into a space, `/` into
" or " and a trailing dot removed (`processed_name(..., rm_dot=True)`); `{article}` is "an" when the annotation's name
starts with a lower-case vowel, else "a" (`article`); every prompt that starts with "a" or "the" gets "This is " in
front. COCO's panoptic names are used as written ("wall-other-merged" stays so: the script removes no suffix).
Each class embedding is the normalised mean of its normalised prompt embeddings
(`modeling_harmoclip.pipeline_harmoclip.prompt_ensemble_embeddings`, through `evaluate.ensemble_text_embeddings`).
"""

from __future__ import annotations

from collections.abc import Sequence

# ViLD's templates in the reference script's order; `{article}` is filled per class name.
VILD_TEMPLATES: tuple[str, ...] = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)
PREFIX = "This is "


def article(name: str) -> str:
    """ "an" if the class name starts with a lower-case vowel, else "a" (the reference looks at the raw name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    return "an" if name[0] in "aeiou" else "a"


def processed_name(name: str) -> str:
    """The class name as the prompts carry it: '_' -> ' ', '/' -> ' or ', lower case, trailing dots removed."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    return name.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def vild_prompts(name: str, templates: Sequence[str] = VILD_TEMPLATES) -> list[str]:
    """The prompts of one class, in template order (63 with the default templates)."""
    texts = [template.format(processed_name(name), article=article(name)) for template in templates]
    return [PREFIX + text if text.startswith(("a", "the")) else text for text in texts]


def prompt_ensemble(class_names: Sequence[str], templates: Sequence[str] = VILD_TEMPLATES) -> list[list[str]]:
    """(C,) class names -> C lists of prompts, each as long as `templates`."""
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"`class_names` must be a non-empty list of strings, got {class_names!r}")
    return [vild_prompts(name, templates) for name in class_names]


__all__ = ["VILD_TEMPLATES", "PREFIX", "article", "processed_name", "vild_prompts", "prompt_ensemble"]
