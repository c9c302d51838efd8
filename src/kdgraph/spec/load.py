"""Load a spec from YAML (safe loading only), apply ``--set`` overrides, and explain every error with its line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from kdgraph.errors import SpecError, did_you_mean, located
from kdgraph.spec.schema import Spec

__all__ = ["load_spec", "spec_from_dict", "parse_overrides", "apply_overrides", "LineIndex", "format_key"]

Path_ = tuple[Any, ...]


class LineIndex(dict):
    """Maps a key path (``("distill", "pairs", 0, "teacher")``) to its 1-based YAML line.

    ``overrides`` maps the key paths that ``--set`` replaced to the override as typed (``train.epochs=x``): a value
    there did not come from the file, so its line would point at the wrong culprit."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.overrides: dict[Path_, str] = {}

    def line(self, path: Iterable[Any]) -> int | str | None:
        """The YAML line of ``path`` (or of its nearest parent in the file). ``--set KEY=VALUE`` instead when the value
        at ``path`` (or a parent of it) was set by an override; ``line N, --set KEY=VALUE`` when overrides changed
        keys inside it."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            if path[:end] in self.overrides:
                return f"--set {self.overrides[path[:end]]}"
        line = self._file_line(path)
        inside = [f"--set {text}" for key, text in self.overrides.items() if path and key[:len(path)] == path]
        if not inside:
            return line
        return ", ".join(([f"line {line}"] if line else []) + inside)

    def _file_line(self, path: Path_) -> int | None:
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


MAX_NODES = 20_000  # values in the spec once aliases are expanded: real specs have a few hundred
MAX_DEPTH = 64


def _index_lines(root: yaml.Node, source: str) -> LineIndex:
    """Walk the composed YAML once, before anything is constructed: the line of every key path, and the problems
    PyYAML lets through: duplicate keys (it keeps the last one silently), aliases that contain themselves, alias
    "bombs" that expand to billions of values, and nesting deeper than any spec needs."""
    index = LineIndex()
    on_path: set[int] = set()
    count = 0

    def walk(node: yaml.Node, path: Path_) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"{source}: YAML aliases (*name) expand to too many values (more than {MAX_NODES:,}); "
                            "a spec is a small tree: repeat the values instead of nesting aliases",
                            line=node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:
            raise SpecError(f"nested more than {MAX_DEPTH} levels deep; a spec is a shallow tree",
                            key=format_key(path[:MAX_DEPTH]), line=node.start_mark.line + 1)
        if id(node) in on_path:
            raise SpecError("an alias (*name) refers to a value that contains it (a recursive anchor); "
                            "a spec must be a tree", key=format_key(path), line=node.start_mark.line + 1)
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            on_path.add(id(node))
            seen: dict[tuple[str, Any], int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                    raise SpecError(f"a key is a {kind}; keys must be plain names", key=format_key(path) or source,
                                    line=line)
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges a mapping, it is no key
                    walk(value_node, path)
                    continue
                key = key_node.value
                ident = (key_node.tag, key)
                if ident in seen:
                    raise SpecError(f"duplicate key {key!r}; it first appears at line {seen[ident]}. YAML would "
                                    "silently keep only the last value: remove or rename one",
                                    key=format_key(path + (key,)), line=line)
                seen[ident] = line
                walk(value_node, path + (key,))
                index[path + (key,)] = line
            on_path.discard(id(node))
        elif isinstance(node, yaml.SequenceNode):
            on_path.add(id(node))
            for i, item in enumerate(node.value):
                walk(item, path + (i,))
            on_path.discard(id(node))

    walk(root, ())
    return index


def _yaml_problem(err: yaml.YAMLError) -> tuple[str, int | None]:
    """``at line L, column C: problem (context ...)`` from a PyYAML error, with a hint for tabs."""
    if isinstance(err, yaml.reader.ReaderError):
        return f"at character {err.position + 1}: {str(err).splitlines()[0]}", None
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    text = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        starts = cmark and (not mark or cmark.line != mark.line)
        text += f" ({context}" + (f", which starts at line {cmark.line + 1}, column {cmark.column + 1})" if starts
                                  else ")")
    if "'\\t'" in problem or "\t" in problem:
        text += "; YAML is indented with spaces, never tabs"
    return text, mark.line + 1 if mark else None


class SpecLoader(yaml.SafeLoader):
    """Safe loading (no Python tags), plus YAML 1.2 scalars: ``1e-3`` is a number, not the string '1e-3', and only
    true/false are booleans (YAML 1.1 also reads on/off/yes/no as booleans, so ``compile: off`` would be ``False``;
    boolean fields still accept those words through the schema)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in SpecLoader.yaml_implicit_resolvers.items()}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _read_yaml(text: str, source: str) -> tuple[Any, LineIndex]:
    loader = None
    try:
        loader = SpecLoader(text)  # the reader rejects control characters right here
        node = loader.get_single_node()
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            raise SpecError(f"{source} is empty; a spec needs at least `student: {{model: ...}}`")
        index = _index_lines(node, source)
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as err:
        problem, line = _yaml_problem(err)
        hint = ""
        if "tag" in (err.problem or ""):
            hint = " — YAML tags that construct Python objects are never loaded (safe loading only)"
        raise SpecError(f"{source}: {problem}{hint}", line=line) from None
    except yaml.YAMLError as err:
        problem, line = _yaml_problem(err)
        raise SpecError(f"{source} is not valid YAML {problem}", line=line) from None
    except RecursionError:
        raise SpecError(f"{source}: the YAML is nested too deeply to read; a spec is a shallow tree") from None
    finally:
        if loader is not None:
            loader.dispose()
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
            value = yaml.load(raw, Loader=SpecLoader) if raw.strip() else ""  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            value = raw
        out.append((parts, value))
    return out


# Keys whose value may be written short (`mix: cutmix`, `output: DIR`, `eval: [top1]`, `loss: mse`): the mapping key
# the short value stands for, so that `--set data.mix.alpha=0.2` extends `mix: cutmix` instead of dropping it.
_SHORTHANDS = {("data", "mix"): "name", ("output",): "dir", ("eval",): "metrics", ("distill", "pairs", "loss"): "name",
               ("distill", "logits", "loss"): "name",
               ("distill", "pairs", "projector"): "name", ("distill", "pairs", "normalize"): "name"}


def _expand_shorthand(path: list[Any], value: Any, nxt: Any) -> Any:
    """``value`` written as the mapping it is short for, when the override goes on into one of its keys."""
    key = _SHORTHANDS.get(tuple(p for p in path if not isinstance(p, int)))
    if key is not None and not isinstance(nxt, int) and (
            isinstance(value, str) or (key == "metrics" and isinstance(value, list))):
        return {key: value}
    return value


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
                if part in node:
                    node[part] = _expand_shorthand(parts[:i + 1], node[part], nxt)
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


def _clean_loc(loc: tuple) -> tuple[Path_, bool]:
    """A pydantic error location as a spec key path: union-branch tags (``ModelSpec``, ``literal['self']``,
    ``function-after[...]``) dropped. The flag says whether a tag was dropped (the error is one union branch's)."""
    kept = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("str", "dict[str,any]") or _is_model_name(part)):
            continue
        kept.append(part)
    return tuple(kept), len(kept) != len(loc)


def _is_model_name(part: str) -> bool:
    from kdgraph.spec import schema

    found = getattr(schema, part, None) if part[:1].isupper() else None
    return isinstance(found, type) and issubclass(found, BaseModel)


def _explain(err: dict, loc: Path_, index: LineIndex, also: list[dict] = ()) -> str:
    where = located(format_key(loc) or "(top level)", index.line(loc))
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        valid = list(owner.model_fields) if owner else []
        hint = (did_you_mean(str(loc[-1]), valid) if loc else "") or "."
        return f"{where}: unknown key{hint} Valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    for other in also:  # the other branches of a union, at the same key: "Input should be A or B"
        msg += " or " + other["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    literals = [e["msg"] for e in (err, *also) if e["type"] == "literal_error"]
    if literals and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", " ".join(literals))
        msg += did_you_mean(value, choices)
    return f"{where}: {msg}{shown}"


def _explain_all(errors: list[dict], index: LineIndex) -> list[tuple[str, Path_]]:
    """One line per problem. A union (``teacher: {model: ...} | self``) reports an error per branch: a branch's
    error is dropped when a deeper error explains the same key, and branches at the same key are merged."""
    cleaned = [(e, *_clean_loc(tuple(e["loc"]))) for e in errors]
    kept = []
    for e, loc, branch in cleaned:
        if branch and any(other[:len(loc)] == loc and len(other) > len(loc) for _, other, _ in cleaned):
            continue
        kept.append((e, loc, branch))
    out: list[tuple[str, Path_]] = []
    done: set[int] = set()
    for i, (e, loc, branch) in enumerate(kept):
        if i in done:
            continue
        same = [j for j, (_, other, b) in enumerate(kept) if j > i and branch and b and other == loc]
        done.update(same)
        out.append((_explain(e, loc, index, [kept[j][0] for j in same]), loc))
    return out


def spec_from_dict(data: Any, index: LineIndex | None = None, source: str = "spec") -> Spec:
    """Validate a plain dict into a Spec; raises SpecError listing every problem with key path and line."""
    index = index or LineIndex()
    if not isinstance(data, dict):
        raise SpecError(f"{source} must be a mapping of keys (name, teacher, student, ...), not {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        explained = _explain_all(err.errors(include_url=False), index)
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
        overrides = list(overrides)
        parsed = parse_overrides(overrides)
        apply_overrides(data, parsed)
        for item, (parts, _) in zip(overrides, parsed):
            index.overrides[tuple(parts)] = item.strip()
    return spec_from_dict(data, index, source=str(path))
