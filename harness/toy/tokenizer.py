"""A minimal CLIP BPE tokenizer whose vocabulary is built in code.

Why: the toy pipeline must load with plain ``StableDiffusionPipeline.from_pretrained``, so it
needs a real ``CLIPTokenizer`` (vocab.json + merges.txt), yet nothing can be downloaded. We
learn byte-pair merges on the toy world's own words until every word is a single token; every
other text still tokenizes (into byte-level pieces), as with the real CLIP tokenizer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from harness.toy.world import OBJECTS, STYLES

# Every word the toy world's prompts use, plus a few generic words that methods may use as
# anchors (e.g. UCE maps an erased concept to "object" or "style"-less prompts).
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys([*OBJECTS, *STYLES, "a", "an", "image", "in", "style", "of", "object", "shape", "plain", "picture"])
)
MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map (the base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_merges(words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
    """Standard BPE learning on the word list, run until every word is one symbol.

    Encoding a training word with merges learned this way reproduces its training
    segmentation, so each word of the list becomes exactly one token.
    """
    seqs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs.values()):
        pairs = Counter(p for s in seqs.values() for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by name
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def write_tokenizer(out_dir: str | Path) -> None:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = learn_merges()
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MAX_LENGTH,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
                "errors": "replace",
            }
        )
    )


def load_tokenizer(path: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))
