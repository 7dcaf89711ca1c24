"""Read and check a manifest, and answer what it selects.

A manifest is a YAML file; its format is ``schemas/manifest.schema.json`` (shipped in
the package) and ``examples/manifest.yaml`` shows every feature::

    version: 1
    destination: data            # relative to the manifest's folder unless absolute
    studies:
      - accession: SDY1
        paths: [StudyFiles]      # below the study root; leave out for the whole study
        include: ["*.txt"]
      - accession: SDY269

Validation reports every problem at once, each as ``file:line:col: place: what``, so a
manifest is fixed in one pass. The schema holds every rule a schema can express; the
rules it cannot (duplicate YAML keys, duplicate accessions, duplicate paths) live here.
Positions come from the composed YAML node tree, which is also what we build the data
from: ``yaml.safe_load`` would silently keep the last of two equal keys, and would hide
where each value was written.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase, translate
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from . import model
from .errors import ManifestError

log = logging.getLogger(__name__)

ALIAS_EXPANSION_LIMIT = 100_000
"""How many values YAML aliases may add to a manifest (a "billion laughs" guard)."""

MAX_MANIFEST_BYTES = 10 * 1024 * 1024
"""The largest manifest read, in bytes (10 MiB). A manifest names studies and folders;
checking one costs about a third of a second and 3 MB of memory per MB of YAML, so a
larger file is refused before it is parsed."""

_Path = tuple[Any, ...]
"""A JSON path: mapping keys and list indexes from the document root."""
_Problem = tuple[int, int, str, str]
"""(line, column, place, what is wrong)."""

_YAML_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _YAML_TAG + "merge"
_VALUE_TAG = _YAML_TAG + "value"
_STR_TAG = _YAML_TAG + "str"
_SEQ_TAG = _YAML_TAG + "seq"
_MAP_TAG = _YAML_TAG + "map"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_CLIP = 60
_ROOT_KEYS = "version, destination and studies"


class _Unreadable:
    """Marks a mapping key we could not construct (already reported)."""


_UNREADABLE = _Unreadable()


# --------------------------------------------------------------------------- public API


def load_manifest(path: Path) -> model.Manifest:
    """Read, validate and interpret the manifest at *path*.

    Args:
        path: the manifest file. Messages name it exactly as given.

    Returns:
        The manifest, with ``destination`` made absolute (relative to the manifest's
        folder unless written absolute), and each study's paths normalised (a trailing
        "/" is dropped).

    Raises:
        ManifestError: the file cannot be read (with a hint), or it is not a valid
            manifest. ``problems`` then lists every problem found, sorted by position,
            each as ``<path>:<line>:<col>: <place>: <what is wrong>``, where place is
            like ``studies[1].paths[0]`` or ``(document)``.
    """
    raw = _read(path)
    checker = _Checker(str(path))
    data = checker.parse(raw)
    if checker.problems:
        problems = checker.formatted()
        count = len(problems)
        raise ManifestError(
            f"invalid manifest {path}: {count} problem{'' if count == 1 else 's'}",
            problems=problems,
        )
    manifest = _interpret(path, data, checker.lines(data))
    log.debug(
        "manifest %s: %d studies, destination %s",
        path,
        len(manifest.studies),
        manifest.destination,
    )
    return manifest


@functools.cache
def load_schema() -> dict[str, Any]:
    """The manifest's JSON schema (draft 2020-12), from the package's resources.

    The result is cached and shared between callers: do not modify it.
    """
    resource = resources.files("immsync") / "schemas" / "manifest.schema.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def selects(study: model.StudySelection, path_below_study: str) -> bool:
    """Whether the study's include/exclude filters keep a file.

    *path_below_study* is the file's path below the study root, without the accession
    and without a leading "/", e.g. ``ResultFiles/Flow_cytometry_result/x.fcs``.

    A file is kept when ``include`` is empty or any include pattern matches it, and no
    exclude pattern matches it. The filters apply to every file under the study's
    ``paths``, including a file that ``paths`` names directly.

    A pattern matches a file when :func:`fnmatch.fnmatchcase` matches the *whole* path
    below the study, or, for a pattern without "/", the file's base name. Matching is
    case-sensitive, and "*" also matches "/". So ``*.fcs`` keeps ``.fcs`` files at any
    depth, ``ResultFiles/*`` everything below ``ResultFiles``, ``ResultFiles/*.txt``
    every ``.txt`` file at any depth below ``ResultFiles``; as an exclude, ``.*`` leaves
    out files whose base name starts with a dot.
    """
    if not study.include and not study.exclude:
        return True
    if study.include and not any(pattern_matches(p, path_below_study) for p in study.include):
        return False
    return not any(pattern_matches(p, path_below_study) for p in study.exclude)


def pattern_matches(pattern: str, path_below_study: str) -> bool:
    """Whether one include/exclude *pattern* matches a file (see :func:`selects`)."""
    if fnmatchcase(path_below_study, pattern):
        return True
    return "/" not in pattern and fnmatchcase(path_below_study.rsplit("/", 1)[-1], pattern)


def case_fixed_pattern(pattern: str, paths: Iterable[str]) -> str | None:
    """*pattern* with its letters in the case of the first of *paths* it matches when
    case is ignored (``*.FCS`` and ``x/a.fcs`` give ``*.fcs``); None when none does.
    """
    tokens = _glob_tokens(pattern)
    if not any(literal for _text, literal in tokens):
        return None
    regex = "".join(
        f"({re.escape(text)})" if literal else _glob_regex(text) for text, literal in tokens
    )
    ignoring_case = re.compile(regex, re.IGNORECASE | re.DOTALL)
    for path in paths:
        names = (path, path.rsplit("/", 1)[-1]) if "/" not in pattern else (path,)
        for name in names:
            found = ignoring_case.fullmatch(name)
            if found is None:
                continue
            groups = iter(found.groups())
            fixed = "".join(next(groups) if literal else text for text, literal in tokens)
            if fixed != pattern and pattern_matches(fixed, path):
                return fixed
    return None


def _glob_tokens(pattern: str) -> list[tuple[str, bool]]:
    """A glob as (text, is literal) runs, read as :mod:`fnmatch` reads it."""
    tokens: list[tuple[str, bool]] = []
    literal = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        end = i + 1
        wild = char in "*?"
        if char == "[":
            close = i + 1
            for optional in "!]":
                if pattern[close : close + 1] == optional:
                    close += 1
            close = pattern.find("]", close)
            wild = close >= 0  # without its "]", a "[" is itself
            end = close + 1 if wild else end
        if wild:
            if literal:
                tokens.append((literal, True))
                literal = ""
            tokens.append((pattern[i:end], False))
        else:
            literal += char
        i = end
    if literal:
        tokens.append((literal, True))
    return tokens


def _glob_regex(wildcard: str) -> str:
    if wildcard == "*":
        return ".*"
    if wildcard == "?":
        return "."
    # A bracket expression: fnmatch's own translation, without its end anchor.
    return re.sub(r"\\[Zz]$", "", translate(wildcard))


def study_roots(study: model.StudySelection) -> list[str]:
    """The ImmPort paths to list for *study*: ``/SDY1/<path>`` each, or ``/SDY1``."""
    if not study.paths:
        return [f"/{study.accession}"]
    return [f"/{study.accession}/{p}" for p in study.paths]


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError(
            f"manifest {path} does not exist",
            hint="check the file name; a relative path starts from the current folder",
        ) from exc
    except IsADirectoryError as exc:
        raise ManifestError(
            f"manifest {path} is a folder, not a file",
            hint="pass the manifest's YAML file, e.g. manifest.yaml",
        ) from exc
    except PermissionError as exc:
        raise ManifestError(
            f"cannot read manifest {path}: permission denied",
            hint="make the file readable by the user running immsync",
        ) from exc
    except OSError as exc:
        raise ManifestError(
            f"cannot read manifest {path}: {exc.strerror or exc}",
            hint="check that the file exists and is readable",
        ) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"manifest {path} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB, the most "
            "immsync reads; it was not parsed",
            hint="a manifest names studies and folders: name a folder instead of each file "
            "below it, or select files with include/exclude patterns",
        )
    return raw


def _interpret(
    path: Path, data: dict[str, Any], lines: dict[tuple[str, str, str], int]
) -> model.Manifest:
    written = Path(data["destination"])
    destination = written if written.is_absolute() else path.parent / written
    studies = tuple(
        model.StudySelection(
            accession=study["accession"],
            paths=tuple(_normalise(p) for p in study.get("paths", ())),
            include=tuple(study.get("include", ())),
            exclude=tuple(study.get("exclude", ())),
            file_types=_file_types(study.get("file_types")),
        )
        for study in data["studies"]
    )
    # abspath, not resolve(): keep the names the user wrote (a symlinked data folder
    # stays recognisable in messages) while removing "." and ".." lexically.
    return model.Manifest(
        source=path,
        destination=Path(os.path.abspath(destination)),
        studies=studies,
        transport=data.get("transport"),
        lines=lines,
    )


def _file_types(written: list[str] | None) -> tuple[str, ...]:
    if written is None:
        return model.DEFAULT_FILE_TYPES
    # In one canonical order, so that two manifests meaning the same compare equal.
    return tuple(t for t in model.FILE_TYPES if t in written)


def _normalise(path: str) -> str:
    # The schema forbids "//", so at most one trailing slash is left to drop.
    return path[:-1] if path.endswith("/") else path


# --------------------------------------------------------------------------- checking


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


class _Checker:
    """Turns manifest bytes into data, collecting every problem on the way."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[_Problem] = []
        self._keys: dict[yaml.Node, Any] = {}
        self._values: dict[yaml.Node, Any] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._root: yaml.Node | None = None

    # -- reporting

    def add(self, where: yaml.Node | yaml.Mark | None, path: _Path, what: str) -> None:
        mark = where.start_mark if isinstance(where, yaml.Node) else where
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.problems.append((line, column, _place(path), what))

    def formatted(self) -> tuple[str, ...]:
        unique = dict.fromkeys(self.problems)
        ordered = sorted(unique, key=lambda p: (p[0], p[1]))
        return tuple(
            f"{self.source}:{ln}:{col}: {place}: {what}" for ln, col, place, what in ordered
        )

    # -- parsing

    def parse(self, raw: bytes) -> Any:
        """The document's data; only meaningful when no problem was recorded."""
        text = self._decode(raw)
        if text is None:
            return None
        root = self._compose(text)
        if root is None:
            return None
        self._root = root
        if not self._scan(root):
            return None
        data = self._build(root, ())
        self._validate(data)
        self._check_duplicates(data)
        return data

    def _decode(self, raw: bytes) -> str | None:
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            self.problems.append(
                (line, column, "(document)", f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")
            )
            return None

    def _compose(self, text: str) -> yaml.Node | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            line, column, what = _syntax_problem(exc, text)
            self.problems.append((line, column, "(document)", what))
            return None
        except yaml.reader.ReaderError as exc:
            self._add_at_offset(text, exc.position, f"YAML syntax error: {_reader_message(exc)}")
            return None
        except yaml.YAMLError as exc:
            self.add(None, (), f"YAML syntax error: {exc}")
            return None
        except RecursionError:
            self.add(None, (), "the manifest is nested too deeply to read")
            return None
        if root is None:
            self.add(None, (), f"the manifest is empty: expected a mapping with {_ROOT_KEYS}")
        return root

    def _add_at_offset(self, text: str, offset: int, what: str) -> None:
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        self.problems.append((line, column, "(document)", what))

    # -- pass 1: keys, aliases

    def _scan(self, root: yaml.Node) -> bool:
        """Read every key and find duplicates; False if aliases make the tree unsafe.

        This runs before anything is built because building flattens merge keys ("<<")
        in place, after which a mapping's own keys can no longer be told apart.
        """
        sizes: dict[yaml.Node, int] = {}
        active: set[yaml.Node] = set()

        def visit(node: yaml.Node, path: _Path) -> int | None:
            known = sizes.get(node)
            if known is not None:
                return known
            if node in active:
                self.add(node, path, "a YAML alias refers to a value that contains it")
                return None
            active.add(node)
            children: list[tuple[yaml.Node, _Path]] = []
            if isinstance(node, yaml.MappingNode):
                children = self._scan_keys(node, path)
            elif isinstance(node, yaml.SequenceNode):
                children = [(child, (*path, i)) for i, child in enumerate(node.value)]
            total = 1
            for child, child_path in children:
                size = visit(child, child_path)
                if size is None:
                    return None
                total += size
            active.discard(node)
            sizes[node] = total
            return total

        total = visit(root, ())
        if total is None:
            return False
        if total - len(sizes) > ALIAS_EXPANSION_LIMIT:
            self.add(
                root,
                (),
                f"YAML aliases expand the manifest by more than {ALIAS_EXPANSION_LIMIT} values",
            )
            return False
        return True

    def _scan_keys(self, node: yaml.MappingNode, path: _Path) -> list[tuple[yaml.Node, _Path]]:
        children: list[tuple[yaml.Node, _Path]] = []
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            children.append((key_node, path))
            if key_node.tag == _MERGE_TAG:
                children.append((value_node, path))
                continue
            key = self._key(key_node, path)
            if key is _UNREADABLE:
                children.append((value_node, path))
                continue
            earlier = first.get(key)
            if earlier is None:
                first[key] = key_node
            else:
                self.add(
                    key_node,
                    (*path, key),
                    f"duplicate key {_show(key)} (first at line {earlier.start_mark.line + 1})",
                )
            children.append((value_node, (*path, key)))
        return children

    def _key(self, node: yaml.Node, path: _Path) -> Any:
        if node in self._keys:
            return self._keys[node]
        key: Any = _UNREADABLE
        if not isinstance(node, yaml.ScalarNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            self.add(node, path, f"a key must be a plain value, not {kind}")
        else:
            if node.tag == _VALUE_TAG:
                node.tag = _STR_TAG  # what PyYAML's flatten_mapping would do later
            ok, value = self._construct(node)
            if not ok:
                self.add(node, path, _unreadable_message(node, value))
            else:
                try:
                    hash(value)
                except TypeError:
                    self.add(node, path, "a key must be a plain value")
                else:
                    key = value
        self._keys[node] = key
        return key

    def _construct(self, node: yaml.ScalarNode) -> tuple[bool, Any]:
        try:
            return True, self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            return False, exc.problem or str(exc)
        except Exception as exc:  # PyYAML lets ValueError & co. escape on bad timestamps
            return False, str(exc) or type(exc).__name__

    # -- pass 2: data

    def _build(self, node: yaml.Node, path: _Path) -> Any:
        if node in self._values:
            return self._values[node]
        if isinstance(node, yaml.ScalarNode):
            ok, value = self._construct(node)
            if not ok:
                self.add(node, path, _unreadable_message(node, value))
                value = node.value
            self._values[node] = value
            return value
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, path, _SEQ_TAG)
            items: list[Any] = []
            self._values[node] = items
            items.extend(self._build(child, (*path, i)) for i, child in enumerate(node.value))
            return items
        assert isinstance(node, yaml.MappingNode)
        self._check_tag(node, path, _MAP_TAG)
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.add(exc.problem_mark or node, path, f"YAML merge error: {exc.problem}")
        mapping: dict[Any, Any] = {}
        self._values[node] = mapping
        for key_node, value_node in node.value:
            key = self._keys.get(key_node, _UNREADABLE)
            if key is not _UNREADABLE:
                mapping[key] = self._build(value_node, (*path, key))
        return mapping

    def _check_tag(self, node: yaml.Node, path: _Path, plain: str) -> None:
        if node.tag != plain:
            tag = node.tag.replace(_YAML_TAG, "!!")
            self.add(node, path, f"unsupported YAML tag {tag}: use plain mappings and lists")

    # -- schema

    def _validate(self, data: Any) -> None:
        errors = list(_validator().iter_errors(data))
        # A value of the wrong type, or an empty string, fails other keywords too
        # (const, pattern): say only what is most basically wrong with it.
        basic = {"type", "minLength"}
        flawed = {tuple(e.absolute_path) for e in errors if e.validator in basic}
        seen_required: set[tuple[_Path, str]] = set()
        for error in errors:
            path = tuple(error.absolute_path)
            if error.validator not in basic and path in flawed:
                continue
            if error.validator == "required":
                required = error.validator_value
                for name in required if isinstance(required, list) else ():
                    if name not in error.instance and (path, name) not in seen_required:
                        seen_required.add((path, name))
                        self.add(self._locate(path), path, f"missing required key {name!r}")
            elif error.validator == "additionalProperties":
                self._unknown_keys(error, path)
            elif error.validator == "uniqueItems":
                self._repeated_items(error, path)
            else:
                self.add(self._locate(path), path, self._explain(error, path, data))

    def _unknown_keys(self, error: ValidationError, path: _Path) -> None:
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = list(schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, dict) else {}
        for key in instance:
            if key in allowed:
                continue
            key_node = self._locate_key(path, key)
            shown = _show(key) if isinstance(key, str) else _text(key, key_node)
            # Name a key the way it was written: "on", not True.
            written = key_node.value if isinstance(key_node, yaml.ScalarNode) else key
            close = difflib.get_close_matches(str(key), allowed, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            self.add(
                key_node,
                (*path, written),
                f"unknown key {shown}{guess}; allowed keys: {', '.join(allowed)}",
            )

    def _repeated_items(self, error: ValidationError, path: _Path) -> None:
        items = error.instance if isinstance(error.instance, list) else []
        first: dict[Any, yaml.Node] = {}
        for i, value in enumerate(items):
            try:
                earlier = first.setdefault(value, self._locate((*path, i)))
            except TypeError:  # a list or mapping where a value belongs: reported apart
                continue
            node = self._locate((*path, i))
            if earlier is not node:
                line = earlier.start_mark.line + 1
                self.add(node, (*path, i), f"{_text(value, node)} is already listed at line {line}")

    def _explain(self, error: ValidationError, path: _Path, data: Any) -> str:
        value = error.instance
        node = self._locate(path)
        name = next((p for p in reversed(path) if isinstance(p, str)), "")
        kind = error.validator
        if kind == "type":
            return _type_message(str(error.validator_value), value, node, path)
        if kind == "const":
            return f"unsupported version {_text(value, node)}: this immsync reads version 1"
        if kind == "minLength":
            return "must not be empty"
        if kind == "minItems":
            return _EMPTY_LIST.get(name, "must not be empty")
        if kind == "enum" and name == "transport":
            return f"unknown transport {_text(value, node)}: use ascp, https or auto"
        if kind == "enum" and name == "file_types":
            return _file_type_message(value, node)
        if kind == "pattern" and isinstance(value, str):
            return _accession_message(value)
        if kind == "not" and isinstance(value, str) and isinstance(error.validator_value, dict):
            explain = _FORBIDDEN.get(str(error.validator_value.get("pattern")))
            if explain is not None:
                return explain(value, path, data)
        return _clip(error.message, 200)

    # -- rules a schema cannot express

    def _check_duplicates(self, data: Any) -> None:
        studies = data.get("studies") if isinstance(data, dict) else None
        if not isinstance(studies, list):
            return
        accessions: dict[str, yaml.Node] = {}
        for i, study in enumerate(studies):
            if not isinstance(study, dict):
                continue
            accession = study.get("accession")
            if isinstance(accession, str):
                path: _Path = ("studies", i, "accession")
                node = self._locate(path)
                first = accessions.setdefault(accession, node)
                if first is not node:
                    self.add(
                        node,
                        path,
                        f"{_show(accession)} is already listed at line "
                        f"{first.start_mark.line + 1}: merge the two entries",
                    )
            paths = study.get("paths")
            if not isinstance(paths, list):
                continue
            seen: dict[str, tuple[str, yaml.Node]] = {}
            for j, written in enumerate(paths):
                if not isinstance(written, str):
                    continue
                path = ("studies", i, "paths", j)
                node = self._locate(path)
                earlier = seen.setdefault(_normalise(written), (written, node))
                if earlier[1] is node:
                    continue
                line = earlier[1].start_mark.line + 1
                if earlier[0] == written:
                    self.add(node, path, f"{_show(written)} is already listed at line {line}")
                else:
                    self.add(
                        node,
                        path,
                        f"{_show(written)} is the same path as {_show(earlier[0])} at line {line}",
                    )

    # -- positions

    def lines(self, data: dict[str, Any]) -> dict[tuple[str, str, str], int]:
        """The line of each study's accession, paths and patterns (see ``Manifest.lines``)."""
        found: dict[tuple[str, str, str], int] = {}
        for i, study in enumerate(data["studies"]):
            accession = study["accession"]
            found[(accession, "accession", "")] = self._line(("studies", i, "accession"))
            for key in ("paths", "include", "exclude"):
                for j, value in enumerate(study.get(key, ())):
                    written = _normalise(value) if key == "paths" else value
                    found.setdefault((accession, key, written), self._line(("studies", i, key, j)))
        return found

    def _line(self, path: _Path) -> int:
        return int(self._locate(path).start_mark.line) + 1

    def _locate(self, path: _Path) -> yaml.Node:
        """The node a JSON path leads to, or the deepest node on the way there."""
        assert self._root is not None
        node = self._root
        for part in path:
            found = self._child(node, part)
            if found is None:
                return node
            node = found
        return node

    def _child(self, node: yaml.Node, part: Any) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            key_node = self._key_node(node, part)
            if key_node is None:
                return None
            value_node: yaml.Node = next(v for k, v in reversed(node.value) if k is key_node)
            return value_node
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            return node.value[part] if 0 <= part < len(node.value) else None
        return None

    def _key_node(self, node: yaml.MappingNode, key: Any) -> yaml.Node | None:
        # The last equal key wins, as in the dict we built.
        for key_node, _value in reversed(node.value):
            found = self._keys.get(key_node, _UNREADABLE)
            if found is not _UNREADABLE and found == key:
                return key_node  # type: ignore[no-any-return]
        return None

    def _locate_key(self, path: _Path, key: Any) -> yaml.Node:
        mapping = self._locate(path)
        if isinstance(mapping, yaml.MappingNode):
            key_node = self._key_node(mapping, key)
            if key_node is not None:
                return key_node
        return mapping


# --------------------------------------------------------------------------- wording


def _place(path: _Path) -> str:
    place = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            place += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            place += f".{part}" if place else part
        else:
            place += f"[{_show(part)}]"
    return place or "(document)"


def _clip(text: str, limit: int = _CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """A short, quoted rendering of a value the user wrote."""
    if isinstance(value, str):
        return repr(value) if len(value) <= _CLIP else repr(value[: _CLIP - 3]) + "..."
    return _clip(str(value))


def _text(value: Any, node: yaml.Node) -> str:
    """How the user wrote a scalar (``yes`` rather than ``True``)."""
    if isinstance(node, yaml.ScalarNode) and not isinstance(value, str):
        return _clip(str(node.value))
    return _show(value)


def _describe(value: Any, node: yaml.Node) -> str:
    if value is None:
        written = node.value if isinstance(node, yaml.ScalarNode) else ""
        return f"null ({_clip(written)})" if written else "no value"
    kinds: list[tuple[type[Any] | tuple[type[Any], ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (dt.datetime, "a timestamp"),
        (dt.date, "a date"),
    ]
    for kind, article in kinds:
        if isinstance(value, kind):
            return f"{article} ({_text(value, node)})"
    if isinstance(value, str):
        return f"a string {_show(value)}"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_EXPECTED = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
}


def _type_message(expected: str, value: Any, node: yaml.Node, path: _Path) -> str:
    want = _EXPECTED.get(expected, expected)
    if not path:
        want = f"a mapping with {_ROOT_KEYS}"
    message = f"expected {want}, found {_describe(value, node)}"
    if expected == "string" and isinstance(node, yaml.ScalarNode) and value is not None:
        return f"{message}; put it in quotes if it is text"
    if expected == "array" and isinstance(value, str):
        return f"{message}; write it as a list: [{_show(value)}]"
    if expected == "object" and path[:1] == ("studies",) and len(path) == 2:
        example = value if isinstance(value, str) and re.fullmatch("SDY[0-9]+", value) else "SDY269"
        return f"{message}; write each study as a mapping, e.g. '- accession: {example}'"
    return message


_EMPTY_LIST = {
    "studies": "must list at least one study",
    "paths": "must list at least one path; leave out 'paths' to take the whole study",
    "include": "must list at least one pattern; leave out 'include' to take every file",
    "exclude": "must list at least one pattern; leave out 'exclude' to exclude nothing",
    "file_types": (
        "must list at least one file type; leave out 'file_types' to take every type "
        "but archive_file"
    ),
}


def _file_type_message(value: Any, node: yaml.Node) -> str:
    shown = _text(value, node)
    close = difflib.get_close_matches(str(value).lower(), model.FILE_TYPES, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    *others, last = model.FILE_TYPES
    return f"unknown file type {shown}{guess}; use {', '.join(others)} or {last}"


def _accession_message(value: str) -> str:
    message = f"{_show(value)} is not a study accession"
    guess = re.sub(r"[\s_-]", "", value).upper()
    if re.fullmatch("SDY[0-9]+", guess):
        return f"{message}: did you mean {guess!r}? (SDY in capitals, then digits)"
    return f"{message}: expected SDY followed by digits, e.g. SDY269"


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    """(line, column, what) for a document PyYAML could not read, in plain words where
    the mistake is a common one: a tab, a line indented out of step, a missing ':'."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return 1, 1, _syntax_message(exc)
    lines = text.splitlines()
    row = lines[mark.line] if mark.line < len(lines) else ""
    line, column = mark.line + 1, mark.column + 1
    problem = exc.problem or ""
    if row[mark.column : mark.column + 1] == "\t":
        if not row[: mark.column].strip(" -"):
            return line, column, "a tab indents this line: YAML indents with spaces only"
        return line, column, "a tab here: use spaces (YAML does not accept a tab in this place)"
    start = len(row) - len(row.lstrip(" "))
    if problem.startswith("expected <block end>") and column in _entry_columns(row):
        return line, column, _out_of_step(lines, mark.line, column, problem.endswith("'-'"))
    if problem == "mapping values are not allowed here":
        if ": " in row[: mark.column] or row[: mark.column].endswith(":"):
            quote = "a value cannot contain ': ' unless it is quoted: put the value in quotes"
            return line, column, quote
        above = _continued_key(lines, mark.line, start)
        if above is not None:
            return line, start + 1, above
    if problem == "could not find expected ':'" and exc.context_mark is not None:
        context = exc.context_mark
        word = lines[context.line][context.column :].strip() if context.line < len(lines) else ""
        if word and ":" not in word and " " not in word:
            colon = (
                f"{_show(word)} has no ':' after it: write a key as '{word}: value', or "
                f"'{word}:' with its list or mapping on the lines below"
            )
            return context.line + 1, context.column + 1, colon
    return line, column, _syntax_message(exc)


def _entry_columns(row: str) -> list[int]:
    """Where a line's entries start (1-based): ``  - key: v`` gives [3, 5]."""
    at = len(row) - len(row.lstrip(" "))
    columns = [at + 1]
    while row.startswith("- ", at) or row[at:] == "-":
        at += 1
        at += len(row[at:]) - len(row[at:].lstrip(" "))
        columns.append(at + 1)
    return columns


def _content_above(lines: list[str], index: int) -> int | None:
    """The nearest line above *index* that holds more than blanks or a comment."""
    for above in range(index - 1, -1, -1):
        stripped = lines[above].strip()
        if stripped and not stripped.startswith("#"):
            return above
    return None


def _out_of_step(lines: list[str], index: int, column: int, item: bool) -> str:
    above = _content_above(lines, index)
    entries = ""
    if above is not None:
        columns = _entry_columns(lines[above])
        plural = "s" if len(columns) > 1 else ""
        listed = " and ".join(str(c) for c in columns)
        entries = f"line {above + 1} has its entries at column{plural} {listed}"
    if item:
        where = f" ({entries})" if entries else ""
        return (
            f"indentation error: a list item ('-') at column {column}, among the keys of a "
            f"mapping{where}; line each '-' up with the other items of its list, below a "
            "key ending in ':'"
        )
    but = f", but {entries}" if entries else ""
    return (
        f"indentation error: this line starts at column {column}{but}; indent with spaces, "
        "each key in line with the other keys of its mapping and each '-' in line with the "
        "other items of its list"
    )


_KEY_AND_VALUE = re.compile(r"([^\s#'\"\[\]{},:-][^:#]*?):[ ]+([^\s#\[{'\"|>&*!].*?)\s*")


def _continued_key(lines: list[str], index: int, start: int) -> str | None:
    """Explain a line YAML read as more of the value on the line above, if it is one.

    ``accession: SDY1`` followed by a line indented deeper than ``accession`` makes
    YAML read that line as the rest of the value ``SDY1``.
    """
    above = _content_above(lines, index)
    if above is None:
        return None
    row = lines[above]
    key_column = _entry_columns(row)[-1] - 1
    found = _KEY_AND_VALUE.fullmatch(row[key_column:])
    if found is None or start <= key_column:
        return None
    key, value = found.group(1), found.group(2)
    message = (
        f"indentation error: this line is indented deeper than {_show(key)} on line "
        f"{above + 1}, so YAML reads it as more of that key's value {_show(value)}; "
    )
    if lines[index].lstrip(" ").startswith("-"):
        return message + f"to list items under {_show(key)}, leave its value empty"
    return message + f"to start a new key, line it up with {_show(key)} (column {key_column + 1})"


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    message = f"YAML syntax error: {exc.problem or exc.context or 'unreadable'}"
    if exc.problem and exc.context:
        message += f" ({exc.context}"
        mark = exc.context_mark
        if mark is not None and exc.problem_mark is not None and mark.line != exc.problem_mark.line:
            message += f" at line {mark.line + 1}"
        message += ")"
    return message


def _reader_message(exc: yaml.reader.ReaderError) -> str:
    char = exc.character
    code = ord(char) if isinstance(char, str) else int(char)
    return f"unacceptable character #x{code:04x}: {exc.reason}"


def _unreadable_message(node: yaml.ScalarNode, reason: Any) -> str:
    return f"cannot read {_show(node.value)}: {reason}; put it in quotes if it is text"


def _absolute(value: str, path: _Path, data: Any) -> str:
    head = f"{_show(value)}"
    if "paths" not in path:
        return (
            f"{head} starts with '/': patterns match the path below the study, "
            "which has no leading '/'"
        )
    rest = value.lstrip("/")
    accession = _accession_at(data, path)
    if accession and (rest == accession or rest.startswith(accession + "/")):
        rest = rest[len(accession) :].lstrip("/")
    head += " is an absolute path: paths are relative to the study root"
    if not rest:
        return f"{head}; leave out 'paths' to take the whole study"
    return f"{head}, e.g. {_show(rest)}"


def _accession_at(data: Any, path: _Path) -> str | None:
    try:
        accession = data["studies"][path[1]]["accession"]
    except (LookupError, TypeError):
        return None
    return accession if isinstance(accession, str) else None


def _is_pattern(path: _Path) -> bool:
    return "include" in path or "exclude" in path


def _dot(value: str, path: _Path, data: Any) -> str:
    if _is_pattern(path):
        return f"{_show(value)} has a '.' segment, so it can never match a file: remove it"
    if value.rstrip("/") == ".":
        return "'.' is the study root: leave out 'paths' to take the whole study"
    return f"{_show(value)} has a '.' segment: remove it"


def _dot_dot(value: str, path: _Path, data: Any) -> str:
    if _is_pattern(path):
        return f"{_show(value)} has a '..' segment, so it can never match a file: remove it"
    return f"{_show(value)} has a '..' segment: paths must stay inside the study"


def _empty_segment(value: str, path: _Path, data: Any) -> str:
    never = ", so it can never match a file" if _is_pattern(path) else ""
    return f"{_show(value)} has an empty segment ('//'){never}"


def _trailing_slash(value: str, path: _Path, data: Any) -> str:
    # Only patterns forbid it: a path's trailing '/' is dropped.
    message = (
        f"{_show(value)} ends with '/', so it can never match a file: write {_show(value + '*')}"
    )
    folder = value.rstrip("/")
    if "include" in path and not re.search(r"[*?\[]", folder):
        return f"{message} to take everything below the folder, or put {_show(folder)} in paths"
    verb = "take" if "include" in path else "leave out"
    return f"{message} to {verb} everything below it"


_Explain = Callable[[str, _Path, Any], str]

# Keyed by the patterns of the schema's "not" rules (as Python sees the JSON strings).
_FORBIDDEN: dict[str, _Explain] = {
    r"\u0000": lambda v, p, d: f"{_show(v)} contains a NUL character",
    r"\n": lambda v, p, d: f"{_show(v)} contains a line break",
    r"\r": lambda v, p, d: f"{_show(v)} contains a carriage return",
    "^~": lambda v, p, d: (
        f"{_show(v)} starts with '~', which immsync does not expand: write the full path"
    ),
    "^/": _absolute,
    "/$": _trailing_slash,
    r"\\": lambda v, p, d: f"{_show(v)} contains a backslash: separate folders with '/'",
    r"(^|/)\.\.(/|$)": _dot_dot,
    r"(^|/)\.(/|$)": _dot,
    "//": _empty_segment,
}
