"""OpenAI CLIP's tokenizer files (vocab.json, merges.txt) from its BPE merge list `bpe_simple_vocab_16e6.txt.gz`.

The vocabulary is built exactly as OpenAI's `simple_tokenizer` builds it: the 256 byte characters, the same with the
end-of-word marker `</w>`, one token per merge (the first 48,894 merges after the header line), then
`<|startoftext|>` and `<|endoftext|>`. Fewer merges give a small vocabulary in the same format, for tiny models.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

NUM_CLIP_MERGES = 49152 - 256 - 2  # 48,894
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def read_clip_merges(bpe_path: str | Path, num_merges: int | None = None) -> list[tuple[str, str]]:
    """The merges of a `bpe_simple_vocab_16e6.txt.gz` file (header skipped), the first `num_merges` of them."""
    bpe_path = Path(bpe_path)
    if not bpe_path.is_file():
        raise FileNotFoundError(f"BPE vocabulary file not found: {bpe_path}")
    count = NUM_CLIP_MERGES if num_merges is None else num_merges
    if not 0 <= count <= NUM_CLIP_MERGES:
        raise ValueError(f"`num_merges` must be in [0, {NUM_CLIP_MERGES}], got {num_merges}")
    opener = gzip.open if bpe_path.suffix == ".gz" else open
    with opener(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : count + 1]
    merges = [tuple(line.split()) for line in lines]
    for index, merge in enumerate(merges):
        if len(merge) != 2:
            raise ValueError(f"{bpe_path}: line {index + 2} is not a merge pair: {lines[index]!r}")
    return merges  # type: ignore[return-value]


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in OpenAI's order."""
    base = list(bytes_to_unicode().values())
    tokens = base + [token + "</w>" for token in base] + ["".join(merge) for merge in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer_files(
    bpe_path: str | Path, output_dir: str | Path, num_merges: int | None = None
) -> dict[str, int]:
    """Writes `vocab.json` and `merges.txt` (the format `CLIPTokenizer.from_pretrained` reads) into `output_dir`.

    Returns the vocabulary (token -> id).
    """
    merges = read_clip_merges(bpe_path, num_merges)
    vocab = clip_vocabulary(merges)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (output_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(merge) for merge in merges) + "\n", encoding="utf-8"
    )
    return vocab
