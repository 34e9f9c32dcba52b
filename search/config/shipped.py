"""The search spaces and device profiles that ship with hwsearch, found by name as well as by path.

`--space default --device local-1core` works from any folder: a value that is not an existing file and looks
like a bare name is looked up among the shipped files. In the source tree (and an editable install) they are
the repository's `spaces/` and `device_profiles/`; a wheel carries copies under `search/config/shipped/`
(setup.py's build step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from search.errors import ConfigError

Kind = Literal["space", "profile"]
FOLDERS: dict[str, str] = {"space": "spaces", "profile": "device_profiles"}
_SUFFIXES = (".yaml", ".yml")


def shipped_dir(kind: Kind) -> Path | None:
    """The folder of shipped `kind` files: the wheel's copy, else the source tree's."""
    folder = FOLDERS[kind]
    for d in (Path(__file__).parent / "shipped" / folder, Path(__file__).resolve().parents[2] / folder):
        if d.is_dir():
            return d
    return None


def shipped_names(kind: Kind) -> list[str]:
    d = shipped_dir(kind)
    return sorted(p.stem for p in d.iterdir() if p.suffix in _SUFFIXES) if d else []


def resolve(value: str | Path, kind: Kind) -> Path:
    """`value` as a path when it is one (or names a file in a folder); else the shipped file of that name."""
    p = Path(value)
    if p.exists() or len(p.parts) != 1:
        return p  # a path: the loader reports a missing or bad file by its own name
    name = p.stem if p.suffix in _SUFFIXES else p.name
    d = shipped_dir(kind)
    for suffix in _SUFFIXES:
        if d is not None and (d / f"{name}{suffix}").is_file():
            return d / f"{name}{suffix}"
    names = ", ".join(shipped_names(kind)) or "none"
    raise ConfigError(f"{value}: file not found, and no shipped {kind} of that name (shipped: {names})")
