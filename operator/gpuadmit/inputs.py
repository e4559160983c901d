"""Reading a user's files on the command line: bounded, and every problem one line.

`gpuadmit decide` and `gpuadmit simulate` read YAML and JSON the user hands them
(cluster dumps, MarginPolicies, trace files). A hostile or broken file must not
hang them, exhaust memory or end in a traceback, so loading here is bounded:

- the text must be UTF-8 (a BOM is allowed) and at most ``MAX_INPUT_BYTES``;
- YAML aliases may add at most ``MAX_ALIAS_NODES`` nodes in all (a "billion laughs"
  file is a few hundred bytes that expand to billions of nodes: they are counted
  from the parser's events, never built);
- nesting deeper than the interpreter can follow, integers longer than Python
  converts (4,300 digits) and an exhausted memory are reported, not raised.

Every failure is an ``InputError`` whose text names the file (and the line when it
is known), ready to print after the command's name. Exit code 2 is the commands'
convention for it (see ``EXIT_BAD_INPUT``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import Policy

# Exit codes shared by every command: argparse already exits 2 on a bad flag, so a bad file,
# which is the same kind of mistake, gets 2 too; 1 is left for a failure of gpuadmit itself.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

# Larger than any cluster dump we have seen by far (10,000 nodes and 100,000 workloads as JSON
# are 60 MB); the text is held a few times over while it is parsed, so past this the reader
# would need tens of GB before it said anything.
MAX_INPUT_BYTES = 2 * 1024**3
# Nodes YAML aliases may add to a file. `kubectl get -o yaml` writes no aliases at all, and a
# hand-written file that reuses a template a thousand times stays far below; a billion-laughs
# file stops here in milliseconds instead of expanding for minutes into gigabytes.
MAX_ALIAS_NODES = 1_000_000

# What might be a YAML anchor (``&name``) or alias (``*name``): after a space, a flow indicator or
# the line start, so that ``a=1&b=2`` in a URL is not one. A false match only costs a scan.
_YAML_ANCHOR = re.compile(r"(?:^|[\s\[{,])&[^\s\[\]{},]", re.MULTILINE)
_YAML_ALIAS = re.compile(r"(?:^|[\s\[{,])\*[^\s\[\]{},]", re.MULTILINE)
_FIRST_NON_SPACE = re.compile(r"\S")  # JSON or YAML: told by the first character, without copying the text
_READ_CHUNK = 16 * 1024 * 1024
# A file starting with '{' or '[' that stops being JSON within this many characters is read as YAML.
MAX_YAML_FLOW_PROBE = 4096
# An escaped UTF-16 surrogate (JSON's \ud800, YAML's \U0000d800): the loaded text may then hold half a pair.
_ESCAPED_SURROGATE = re.compile(r"\\(?:u|U0000)[dD][89a-fA-F]")


class InputError(Exception):
    """An input that cannot be used at all: one line for stderr, naming the file and position."""


class _NotJson(InputError):
    """Text that starts like JSON and is not: where it stopped being JSON (a character offset)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def display_name(filename: str) -> str:
    return "<stdin>" if filename == "-" else filename


def read_bytes(filename: str, what: str = "") -> bytes:
    """The file's bytes (``-``: stdin), at most ``MAX_INPUT_BYTES``; never empty."""
    name = f"{what} {display_name(filename)}".strip()
    try:
        if filename == "-":
            data = _read_bounded(sys.stdin.buffer, name)
        else:
            with open(filename, "rb") as handle:
                data = _read_bounded(handle, name)
    except IsADirectoryError:
        raise InputError(f"{name}: cannot read: is a directory") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read: {error.strerror or error}") from None
    except MemoryError:
        raise InputError(f"{name}: too large to read into memory") from None
    if not data.strip():
        raise InputError(f"{name}: is empty")
    return data


def _read_bounded(handle: Any, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = handle.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_INPUT_BYTES:
            raise InputError(f"{name}: larger than {MAX_INPUT_BYTES // 1024**3} GiB")
        chunks.append(chunk)


def read_text(filename: str, what: str = "") -> str:
    """The file as text: UTF-8 (with or without a BOM), not empty. ``what`` prefixes the name (``--policy``)."""
    data = read_bytes(filename, what)
    return decode_utf8(data, f"{what} {display_name(filename)}".strip())


def decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{name}: line {line}: not UTF-8 text (byte {error.start})") from None


def load_documents(filename: str, what: str = "") -> list[Any]:
    """Every document of a YAML stream, or of a JSON value / stream of JSON values.

    A top-level array counts as its items, like the items of a ``List``.
    """
    text = read_text(filename, what)
    return parse_documents(text, f"{what} {display_name(filename)}".strip())


def parse_documents(text: str, name: str) -> list[Any]:
    first = _FIRST_NON_SPACE.search(text)
    try:
        if first is not None and first.group() in ("{", "["):
            try:
                documents = _load_json(text, name)
            except _NotJson as not_json:
                # YAML's flow style starts the same way (`{kind: List, items: []}`) and is valid input;
                # it stops being JSON within its first keys, while broken JSON may fail megabytes in,
                # which the far slower YAML reader is not asked to read again.
                if not_json.position > MAX_YAML_FLOW_PROBE:
                    raise
                try:
                    documents = _load_yaml(text, name)
                except InputError:
                    raise not_json from None
        else:
            documents = _load_yaml(text, name)
        if _ESCAPED_SURROGATE.search(text):
            _refuse_lone_surrogates(documents, name)
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be a Kubernetes object") from None
    except MemoryError:
        raise InputError(f"{name}: too large to load into memory") from None
    flattened: list[Any] = []
    for document in documents:
        flattened.extend(document if isinstance(document, list) else [document])
    return flattened


def load_json(text: str, name: str) -> Any:
    """One JSON value, any failure an ``InputError`` (for JSON-only files such as trace lists)."""
    try:
        value = json.loads(text)
        if _ESCAPED_SURROGATE.search(text):
            _refuse_lone_surrogates(value, name)
        return value
    except json.JSONDecodeError as error:
        raise InputError(f"{name}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{name}: not valid JSON: {_first_line(error)}") from None
    except MemoryError:
        raise InputError(f"{name}: too large to load into memory") from None


def _refuse_lone_surrogates(value: Any, name: str) -> None:
    """JSON's ``"\\ud800"`` decodes to half a UTF-16 pair, which no output can encode: refuse it here
    rather than end in a traceback when a name holding it is printed."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(error.object[error.start])
        raise InputError(f"{name}: a string holds the lone UTF-16 surrogate \\u{code:04x}, which is not text") from None


def _load_json(text: str, name: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            raise _NotJson(f"{name}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}", error.pos) from None
    except ValueError as error:
        raise InputError(f"{name}: not valid JSON: {_first_line(error)}") from None
    # Several JSON values one after another (e.g. `kubectl get -o json` run twice).
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            return documents
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise _NotJson(f"{name}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}", error.pos) from None
        except ValueError as error:
            raise InputError(f"{name}: not valid JSON: {_first_line(error)}") from None
        documents.append(document)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML (C speed when libyaml is there) that keeps timestamps as the strings they are."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)


def _load_yaml(text: str, name: str) -> list[Any]:
    try:
        if _YAML_ANCHOR.search(text) and _YAML_ALIAS.search(text):  # else there is nothing to expand
            _check_alias_expansion(text, name)
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = error.problem or error.context or "unreadable"
        raise InputError(f"{name}: {where}not valid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{name}: not valid YAML: {_first_line(error) or 'unreadable'}") from None
    except ValueError as error:  # a constructor's: e.g. an integer of more digits than Python converts
        raise InputError(f"{name}: not valid YAML: {_first_line(error)}") from None


def _check_alias_expansion(text: str, name: str) -> None:
    """Raise when the aliases of ``text`` would add more than ``MAX_ALIAS_NODES`` nodes.

    Walks the parser's events (no object is built): each anchored node's expanded size
    is recorded when it ends, and each alias adds the size of what it names.
    """
    sizes: dict[str, int] = {}
    open_nodes: list[list[Any]] = []  # [expanded size so far, anchor] per open collection
    added = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()  # anchors are scoped to their document
            continue
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            open_nodes.append([1, event.anchor])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = open_nodes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor or "", 1), None
            added += size
            if added > MAX_ALIAS_NODES:
                line = event.start_mark.line + 1 if event.start_mark is not None else 0
                raise InputError(
                    f"{name}: line {line}: YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes "
                    "(a billion-laughs file?); write the objects out instead"
                )
        else:
            continue
        if anchor:
            sizes[anchor] = size
        if open_nodes:
            open_nodes[-1][0] += size


def load_policy(filename: str, what: str = "--policy") -> Policy:
    """The MarginPolicy in a file: a MarginPolicy object (the first one) or a bare spec mapping."""
    return load_policy_object(filename, what)[1]


def load_policy_object(filename: str, what: str = "--policy") -> tuple[dict[str, Any], Policy]:
    """The MarginPolicy in a file as an object to create (a bare spec becomes a MarginPolicy's
    ``spec``) and as the ``Policy`` it parses to, so nothing invalid is handed on."""
    from gpuadmit.core.model import API_GROUP, API_VERSION
    from gpuadmit.core.policy import parse_policy
    from gpuadmit.core.snapshot import objects_by_kind

    name = f"{what} {display_name(filename)}".strip()
    documents = [document for document in load_documents(filename, what) if document is not None]
    grouped = objects_by_kind(documents)
    candidates = grouped.get("MarginPolicy") or [
        document for document in documents if isinstance(document, Mapping) and "kind" not in document
    ]
    if not candidates:
        raise InputError(f"{name}: no MarginPolicy (nor a bare MarginPolicy spec) in it")
    try:
        policy = parse_policy(candidates[0])
    except SpecError as error:
        raise InputError(f"{name}: invalid MarginPolicy: {error}") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be a MarginPolicy") from None
    found = dict(candidates[0])
    if found.get("kind") != "MarginPolicy":  # a bare spec
        found = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MarginPolicy", "spec": found}
    return found, policy


def _first_line(error: BaseException) -> str:
    text = str(error)
    if "integer string conversion" in text:  # Python's limit on int(str), a guard against slow parsing
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return text.splitlines()[0] if text else type(error).__name__
