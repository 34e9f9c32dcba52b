"""Built-in datasets, read from disk only (nothing is downloaded at run time)."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from search.errors import UserError

FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_VAL = 5_000  # carved from the 60,000 training images: the selection set
SPLIT_SEED = 0


def fashion_data_dir(data_dir: str | Path | None = None) -> Path:
    """--data-dir, else $HWSEARCH_DATA, else Debian's dataset-fashion-mnist location."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("HWSEARCH_DATA")
    return Path(env) if env else FASHION_DEFAULT_DIR


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 8:
        raise UserError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise UserError(f"{path}: not a uint8 IDX file of 1 or 3 dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({len(body)} bytes for shape {dims})")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"Fashion-MNIST not found: {folder / (stem + '.gz')} is missing. Install Debian's "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point --data-dir / "
        "HWSEARCH_DATA at a folder with the four IDX files"
    )


def stratified_split(y: np.ndarray, n_out: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved) sorted index arrays: `n_out` indices drawn per class in proportion, fixed seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    kept, carved = train_test_split(idx, test_size=n_out, random_state=seed, stratify=y)
    return np.sort(kept), np.sort(carved)


def load_fashion_mnist(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Three splits as float32 [N, 1, 28, 28] in [0, 1] and int64 labels: train 55,000 and val 5,000
    (stratified, fixed seed) from the 60,000 training files, test = the 10,000 t10k images (held out)."""
    folder = fashion_data_dir(data_dir)
    if not folder.is_dir():
        _find(folder, _FASHION_FILES["train_x"])  # raises the helpful message
    arrays = {k: _read_idx(_find(folder, stem)) for k, stem in _FASHION_FILES.items()}
    full = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{folder}: {split} images and labels do not match ({x.shape} vs {y.shape})")
        full[f"{split}_x"] = (x.astype(np.float32) / 255.0)[:, None]
        full[f"{split}_y"] = y.astype(np.int64)
    kept, val = stratified_split(full["train_y"], FASHION_VAL)
    return {"train_x": full["train_x"][kept], "train_y": full["train_y"][kept],
            "val_x": full["train_x"][val], "val_y": full["train_y"][val],
            "test_x": full["test_x"], "test_y": full["test_y"]}


def load_digits_split(seed: int = SPLIT_SEED, val: float = 0.15, test: float = 0.2) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, float32 [N, 1, 8, 8] in [0, 1]: stratified train / val / test
    (65% / 15% / 20%: 1,168 / 270 / 359 images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    rest, te = stratified_split(y, round(test * len(y)), seed)
    kept, va = stratified_split(y[rest], round(val * len(y)), seed)
    tr, va = rest[kept], rest[va]
    return {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va], "test_x": x[te], "test_y": y[te]}


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """Hash of the data a teacher was trained on (part of its cache key)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
