"""Real English text with real labels: WordNet 3.0's noun glosses, each labelled by its synset's supersense
(lexicographer file: noun.artifact, noun.person, ...), from Debian's `wordnet-base` (/usr/share/wordnet).

The ten most frequent noun supersenses (63,245 of the 82,115 noun synsets); a word-level vocabulary of the
training glosses' most frequent words (0 = padding, 1 = unknown); every gloss as SEQ_LEN int64 token ids.
Splits: stratified by supersense, seeded: 80% train / 10% val / 10% test.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from search.metrics import IGNORE_INDEX

WORDNET_DIR = Path("/usr/share/wordnet")
SEQ_LEN = 32  # 98% of the glosses fit
VOCAB = 8192  # ids: 0 padding, 1 unknown, then the training split's most frequent words
LM_VOCAB = 4096  # the language model's: its output layer is dim x LM_VOCAB per position
PAD, UNK = 0, 1
SPLIT_SEED = 0
# WordNet's lexicographer file numbers (lexnames) of the ten largest noun supersenses, largest first.
SUPERSENSES: dict[int, str] = {
    6: "noun.artifact", 18: "noun.person", 20: "noun.plant", 5: "noun.animal", 4: "noun.act",
    10: "noun.communication", 26: "noun.state", 15: "noun.location", 7: "noun.attribute", 27: "noun.substance",
}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def wordnet_dir(data_dir: str | Path | None = None) -> Path:
    """A --data-dir holding data.noun, else $HWSEARCH_WORDNET, else Debian's wordnet-base location."""
    for candidate in (data_dir, os.environ.get("HWSEARCH_WORDNET")):
        if candidate and (Path(candidate) / "data.noun").is_file():
            return Path(candidate)
    return WORDNET_DIR


def read_glosses(folder: Path) -> tuple[list[str], np.ndarray]:
    """(glosses, supersense labels 0..9) of the noun synsets in SUPERSENSES, in file order."""
    from search.errors import UserError

    path = folder / "data.noun"
    if not path.is_file():
        raise UserError(f"{path}: file not found (WordNet 3.0: run 'sudo apt-get install wordnet-base', or set "
                        "HWSEARCH_WORDNET to a folder with data.noun)")
    label_of = {lex: i for i, lex in enumerate(SUPERSENSES)}
    texts, labels = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            head, _, gloss = line.partition(" | ")
            lex = int(head.split()[1])
            if lex in label_of:
                texts.append(gloss.strip())
                labels.append(label_of[lex])
    return texts, np.asarray(labels, dtype=np.int64)


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocab(texts: list[str], size: int = VOCAB) -> dict[str, int]:
    """The `size - 2` most frequent words of `texts` (ties broken alphabetically) -> ids from 2."""
    counts = Counter(w for t in texts for w in tokenize(t))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return {w: i + 2 for i, (w, _n) in enumerate(ranked)}


def encode(texts: list[str], vocab: dict[str, int], seq_len: int = SEQ_LEN) -> np.ndarray:
    """(N, seq_len) int64 ids: truncated, padded with PAD, unknown words as UNK."""
    ids = np.full((len(texts), seq_len), PAD, dtype=np.int64)
    for i, t in enumerate(texts):
        row = [vocab.get(w, UNK) for w in tokenize(t)][:seq_len]
        ids[i, : len(row)] = row
    return ids


def _splits(data_dir: str | Path | None) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(glosses, labels, {split: indices}): stratified by supersense, 80/10/10, seeded."""
    from search.tasks.data import stratified_split

    texts, labels = read_glosses(wordnet_dir(data_dir))
    n = len(texts) // 10
    rest, test = stratified_split(labels, n, SPLIT_SEED)
    kept, val = stratified_split(labels[rest], n, SPLIT_SEED)
    return texts, labels, {"test": test, "val": rest[val], "train": rest[kept]}


def load_wordnet_supersense(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    texts, labels, parts = _splits(data_dir)
    vocab = build_vocab([texts[i] for i in parts["train"]])  # from train only: val/test words can be unknown
    out: dict[str, np.ndarray] = {}
    for split, idx in parts.items():
        out[f"{split}_x"] = encode([texts[i] for i in idx], vocab)
        out[f"{split}_y"] = labels[idx]
    return out


def ids_and_mask(ids: np.ndarray) -> dict[str, np.ndarray]:
    """The supersense encoder's two inputs: the ids and their attention mask (1 = a token, 0 = padding)."""
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def next_token_targets(ids: np.ndarray) -> np.ndarray:
    """Position t's target is token t + 1; IGNORE_INDEX where that is padding, an unknown word (17% of the
    words with LM_VOCAB: predicting "some rare word" is no skill to score) or past the sequence's end."""
    targets = np.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    targets[(targets == PAD) | (targets == UNK)] = IGNORE_INDEX
    return targets


def load_wordnet_lm(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The same glosses and splits as `load_wordnet_supersense`, for next-token prediction: ids (N, SEQ_LEN) over
    the training glosses' LM_VOCAB most frequent words; targets the next known word's id (`next_token_targets`)."""
    texts, _labels, parts = _splits(data_dir)
    vocab = build_vocab([texts[i] for i in parts["train"]], size=LM_VOCAB)
    out: dict[str, np.ndarray] = {}
    for split, idx in parts.items():
        ids = encode([texts[i] for i in idx], vocab)
        targets = next_token_targets(ids)
        scored = (targets != IGNORE_INDEX).any(1)  # a gloss with no known next word would score 0 for everyone
        out[f"{split}_x"], out[f"{split}_y"] = ids[scored], targets[scored]
    return out
