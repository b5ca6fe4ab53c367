"""The one way HarmoCLIP reads an image: upright, RGB, fully decoded, or one line saying which file and why not.

Upright is the displayed frame: the stored pixels turned by the file's EXIF orientation tag, as image viewers, browsers
and annotation tools show the picture and as people draw boxes on it. Every entry point reads images here: the
processor, the pipelines (so the Space, which goes through them), training's data sources and the teacher's crops,
evaluation, and data preparation. A box therefore means the same pixels however the image was handed over (a path,
bytes, or a PIL image opened by the caller).

Very large images: PIL's decompression-bomb guard, `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485 pixels by default), is
a hard limit here: an image above it is refused with one line (PIL itself only warns up to twice the limit). Raise
the limit, or set it to None, to read larger images.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.image_utils import load_image as load_remote_image

# EXIF tag 0x0112: how the stored pixels are turned for display (1: as stored).
EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """An image that cannot be read; the message is one line naming the file."""


def image_name(source: Any) -> str:
    """How an error names `source`: its path, its file name, or what it is."""
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return text if len(text) <= 200 else text[:80] + "..."  # a base64 string is not a name
    filename = getattr(source, "filename", None) or getattr(source, "name", None)
    if isinstance(filename, str) and filename:
        return filename
    return f"<{type(source).__name__}>"


def upright_rgb(image: Any) -> Any:
    """A PIL image turned by its EXIF orientation (display frame) and converted to RGB; a new image, the tag gone.
    Applying it twice is applying it once."""
    import PIL.ImageOps  # Pillow is transformers' vision dependency: wherever images are processed, it is there

    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = PIL.ImageOps.exif_transpose(image)
    return image.convert("RGB")


def read_image(source: Any, name: str | None = None, timeout: float | None = None) -> Any:
    """The image in `source`, upright and RGB (a `PIL.Image.Image`, fully decoded).

    Args:
        source: a path (str or `Path`), an http(s) URL, a base64 string or data URI (as transformers' `load_image`
            takes them), the file's bytes, a binary file object, or a PIL image.
        name: what an error calls the image (default: the path, or the file object's name).
        timeout: seconds to wait for a URL.

    Raises:
        ImageReadError (a ValueError): missing, truncated or corrupt file, not an image, or over PIL's pixel limit,
            in one line naming the file.
        TypeError: `source` is none of the above.
    """
    import PIL.Image

    where = name or image_name(source)
    if isinstance(source, PIL.Image.Image):
        if source.mode == "RGB" and source.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return source  # already upright RGB (the common case in the processor): no copy
        return upright_rgb(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and not os.path.isfile(source):
        # A URL, or transformers' other string forms (base64, data URI); anything else is a missing file.
        is_url = source.startswith(("http://", "https://"))
        try:
            return upright_rgb(load_remote_image(source, timeout=timeout))
        except Exception as error:  # network and decoding errors alike: one line
            reason = f"{type(error).__name__}: {error}".splitlines()[0] if is_url else "no such file"
            raise ImageReadError(f"cannot read image {where}: {reason}") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, str) and not hasattr(source, "read"):
        raise TypeError(
            f"image must be a path, URL, bytes, binary file or PIL image, got {type(source).__name__} for {where}"
        )
    with one_line_errors(where):
        with PIL.Image.open(source) as image:
            image.load()  # decode now: a truncated file fails here, naming it, not later in a transform
            return upright_rgb(image)


def check_image_bytes(data: bytes, name: str) -> None:
    """Checks, without decoding the pixels, that `data` is an image PIL identifies, within PIL's pixel limit and whose
    structure verifies (`Image.verify`): data preparation's cheap check. A truncated file can pass it; `read_image`
    still reports it when the image is read. Raises `ImageReadError` in one line naming `name`."""
    import PIL.Image

    with one_line_errors(name):
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.verify()


@contextmanager
def one_line_errors(where: str) -> Iterator[None]:
    """Turns what PIL raises for an unusable image (and its decompression-bomb warning) into one `ImageReadError`."""
    import PIL.Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            yield
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        limit = PIL.Image.MAX_IMAGE_PIXELS
        raise ImageReadError(
            f"cannot read image {where}: over PIL's decompression-bomb limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS; raise it, or set it to None, to read it): {error}"
        ) from None
    except PIL.UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {where}: not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(
            f"cannot read image {where}: truncated or corrupt ({type(error).__name__}: {error})"
        ) from None
