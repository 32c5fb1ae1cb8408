"""The CLIP BPE tokenizer, written as the vocab.json + merges.txt pair transformers' CLIPTokenizer reads.

The vocabulary ships in this package (assets/bpe_simple_vocab_16e6.txt.gz, MIT licence beside it), so
built-in models and single-file checkpoints need no download for their tokenizer.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte, in CLIP's vocabulary order: printable bytes first."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def write_clip_tokenizer_files(folder: Path, pad_token: str = EOS) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of CLIP's tokenizer into `folder`."""
    asset = resources.files("diffdiff_cli.models").joinpath("assets/bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(asset.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _MERGE_COUNT]]
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": pad_token,
                "do_lower_case": True,
            }
        )
    )
