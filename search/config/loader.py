"""Read YAML files into validated models, turning every problem into one-line ConfigErrors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from search.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class _StrictLoader(yaml.SafeLoader):
    """safe_load, plus: a key given twice is an error (not "the last one wins"), and no aliases (an alias
    bomb expands exponentially; a config file never needs one)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "aliases (*name) are not allowed here",
                                                    event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: the constructor below reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict:
    """Load a YAML file that must hold a mapping; every failure names the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found")
    if not p.is_file():
        raise ConfigError(f"{p}: not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    try:
        loader = _StrictLoader(text)  # what yaml.load does, with our SafeLoader subclass
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())[:200]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{p}: invalid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(f"{p}: expected a YAML mapping at the top level, got {kind}")
    return data


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: str | Path, err: ValidationError, model: type[BaseModel]) -> str:
    """One line: file, field, what is wrong and what is allowed (first error only)."""
    e = err.errors(include_url=False)[0]
    # Validator wrappers ("function-...") and union tags ("<...>") are not fields a user wrote.
    field = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "<")))))
    kind = e["type"]
    given = e.get("input")
    if kind == "extra_forbidden":
        parent = e["loc"][:-1]
        return f"{path}: {field}: unknown key (allowed keys: {_allowed_keys(model, parent)})"
    if kind == "missing":
        return f"{path}: {field}: required field is missing"
    msg = e["msg"].removeprefix("Value error, ")
    shown = repr(given) if isinstance(given, (int, float, str, bool)) or given is None else ""
    if isinstance(given, str) and len(given) > 40:
        shown = repr(given[:40] + "...")
    return f"{path}: {field}: {msg}" + (f" (got {shown})" if shown else "")


def _allowed_keys(model: type[BaseModel], parent: tuple) -> str:
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return "see the documented fields"
        ann = field.annotation
        sub = _model_in(ann)
        if sub is None:
            return "see the documented fields"
        model = sub
    return ", ".join(model.model_fields)


def _model_in(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in getattr(ann, "__args__", ()) or ():
        m = _model_in(a)
        if m is not None:
            return m
    return None


def _reject_non_finite(data, where: str = "") -> str | None:
    if isinstance(data, float) and (math.isnan(data) or math.isinf(data)):
        return where or "(top level)"
    if isinstance(data, dict):
        for k, v in data.items():
            bad = _reject_non_finite(v, f"{where}.{k}" if where else str(k))
            if bad:
                return bad
    if isinstance(data, list):
        for i, v in enumerate(data):
            bad = _reject_non_finite(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


def load_model(model: type[M], path: str | Path) -> M:
    """Validate a YAML file as `model`; raise ConfigError with a one-line message."""
    data = read_yaml_mapping(path)
    bad = _reject_non_finite(data)
    if bad:
        raise ConfigError(f"{path}: {bad}: must be a finite number (got NaN or infinity)")
    try:
        # JSON mode + strict models: lists become tuples, but "8" is not silently an int.
        return model.model_validate_json(json.dumps(data, default=str))
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, model)) from None
