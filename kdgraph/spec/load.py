"""Load a spec from YAML (safe loading only), apply ``--set`` overrides, and explain every error with its line."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from kdgraph.errors import SpecError
from kdgraph.spec.schema import Spec

__all__ = ["load_spec", "spec_from_dict", "parse_overrides", "apply_overrides", "LineIndex", "format_key"]

Path_ = tuple[Any, ...]


class LineIndex(dict):
    """Maps a key path (``("distill", "pairs", 0, "teacher")``) to its 1-based YAML line."""

    def line(self, path: Iterable[Any]) -> int | None:
        path = tuple(path)
        while path:
            if path in self:
                return self[path]
            path = path[:-1]
        return None


def format_key(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _index_lines(node: yaml.Node, path: Path_, index: LineIndex) -> None:
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[path + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, path + (key,), index)
            index[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), index)


def _read_yaml(text: str, source: str) -> tuple[Any, LineIndex]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{source} is empty; a spec needs at least `student: {{model: ...}}`")
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else None
        raise SpecError(
            f"{source}: {err.problem} — YAML tags that construct Python objects are never loaded (safe loading only)",
            line=line,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source} is not valid YAML{where}: {problem}", line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    index = LineIndex()
    _index_lines(node, (), index)
    return data, index


def parse_overrides(items: Iterable[str]) -> list[tuple[list[Any], Any]]:
    """Parse ``a.b=c`` / ``pairs[0].weight=2`` strings; values are YAML scalars (``1``, ``true``, ``1e-3``)."""
    out = []
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r} must look like key.path=value (e.g. train.epochs=1)")
        key, raw = item.split("=", 1)
        parts: list[Any] = []
        for token in re.split(r"\.|(?=\[)", key.strip()):
            if not token:
                continue
            match = re.fullmatch(r"\[(\d+)\]", token)
            parts.append(int(match.group(1)) if match else (int(token) if token.isdigit() else token))
        if not parts:
            raise SpecError(f"--set {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((parts, value))
    return out


def apply_overrides(data: dict, overrides: Iterable[tuple[list[Any], Any]]) -> dict:
    for parts, value in overrides:
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise SpecError(f"--set {format_key(parts)}: no item {part} in {format_key(parts[:i])}")
                node = node[part]
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise SpecError(f"--set {format_key(parts)}: index out of range")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"--set {format_key(parts)}: {format_key(parts[:-1])} is not a mapping")
    return data


def _model_at(path: Path_) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``path`` (to list valid keys)."""
    model: Any = Spec
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _explain(err: dict, index: LineIndex) -> tuple[str, Path_]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "dict[str,any]"))))
    key = format_key(loc) or "(top level)"
    line = index.line(loc)
    where = f"{key}" + (f" (line {line})" if line else "")
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        valid = list(owner.model_fields) if owner else []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{where}: unknown key{hint} Valid keys here: {', '.join(valid)}", loc
    if kind == "missing":
        return f"{where}: required key is missing", loc
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    if kind == "literal_error" and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", err["msg"])
        near = difflib.get_close_matches(value, choices, n=1)
        if near:
            msg += f"; did you mean {near[0]!r}?"
    return f"{where}: {msg}{shown}", loc


def spec_from_dict(data: Any, index: LineIndex | None = None, source: str = "spec") -> Spec:
    """Validate a plain dict into a Spec; raises SpecError listing every problem with key path and line."""
    index = index or LineIndex()
    if not isinstance(data, dict):
        raise SpecError(f"{source} must be a mapping of keys (name, teacher, student, ...), not {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        explained = [_explain(e, index) for e in err.errors(include_url=False)]
        first = explained[0][1]
        lines = "\n  ".join(text for text, _ in explained)
        raise SpecError(
            f"{source} has {len(explained)} problem{'s' * (len(explained) > 1)}:\n  {lines}",
            key=None,
            line=index.line(first),
        ) from None
    spec._lines = index  # type: ignore[attr-defined]
    return spec


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> Spec:
    """Read a YAML spec file (safe loading), apply ``--set`` overrides and validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec file {str(path)!r}: {err}") from None
    data, index = _read_yaml(text, str(path))
    if isinstance(data, dict):
        apply_overrides(data, parse_overrides(overrides))
    return spec_from_dict(data, index, source=str(path))
