"""Admission webhooks' ``matchConditions``: CEL compiled and evaluated as kube-apiserver does.

kube-apiserver (1.30+, ``admission/plugin/webhook/matchconditions`` and ``plugin/cel``) checks the
conditions when a configuration is written (at most 64, names unique qualified names, every
expression compiling to a bool) and, for a request its rules and selectors chose, evaluates them
over ``object``, ``oldObject`` (null on CREATE; ``object`` is null on DELETE) and ``request`` (the
AdmissionRequest without its objects): any false skips the webhook, whatever errors the others
raised; otherwise an error leaves it to the webhook's failurePolicy (the caller's part:
``MatchResult.error``); all true calls it.

cel-python stands in for cel-go: what it cannot tell the way cel-go's type checker does is
approximated here, and said so in docs/emulator.md ("Admission webhooks"):

- compiling is parsing plus two checks the real compiler makes: every name is declared
  (``object``, ``oldObject``, ``request``, ``namespaceObject``, ``authorizer``, the type names and
  the macros' own variables), and the result is a bool (a comparison, ``!``, ``&&``, ``||``,
  ``has()``, ``all``/``exists``/``exists_one``, a bool literal, ``request.dryRun``, a ternary of
  two bools, or a function cel-python does not know, given the benefit of the doubt); a field or
  an index of ``object`` is dynamic, which the real compiler refuses as ``must evaluate to bool``;
- ``authorizer`` (and ``authorizer.requestResource``) answer for the emulator's one user, the
  cluster admin in ``system:masters``: every ``check(verb)`` is ``allowed()``; ``namespaceObject``
  is declared but not bound, as the real server leaves it for webhooks (using it is an evaluation
  error); the Kubernetes CEL libraries (quantity, ip, url, regex ``find``, lists, string
  extensions) are not there, only cel-python's standard functions;
- no cost budget.

Each expression is compiled once (cached by its text), when its configuration is written and read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

MAX_MATCH_CONDITIONS = 64
MAX_NAME_PART = 63
BOUND_VARIABLES = ("object", "oldObject", "request", "authorizer")
# Declared by the real server's environment for webhook conditions, and left unbound for webhooks.
UNBOUND_VARIABLES = ("namespaceObject",)
# The authorizer library's builder methods (authorizer.group('apps').resource('deployments')...).
AUTHORIZER_BUILDERS = ("group", "resource", "subresource", "namespace", "name", "path", "serviceAccount",
                       "fieldSelector", "labelSelector")
TYPE_NAMES = ("bool", "bytes", "double", "duration", "dyn", "int", "list", "map", "null_type", "string",
              "timestamp", "type", "uint")
MACROS = ("all", "exists", "exists_one", "map", "filter")
BOOL_METHODS = ("all", "exists", "exists_one", "startsWith", "endsWith", "contains", "matches", "isSorted",
                "allowed", "errored")
NON_BOOL_METHODS = ("map", "filter", "size", "lowerAscii", "upperAscii", "split", "join", "replace", "trim",
                    "substring", "indexOf", "lastIndexOf", "find", "findAll")
BOOL_FUNCTIONS = ("has", "bool", "matches")
NON_BOOL_FUNCTIONS = ("size", "int", "uint", "double", "string", "bytes", "type", "duration", "timestamp", "dyn")
_WRAPPERS = ("expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
             "member", "primary")

logger = logging.getLogger(__name__)


class CompileError(Exception):
    """An expression the real server refuses when the configuration is written."""


@dataclass(frozen=True)
class MatchCondition:
    name: str
    expression: str
    program: Any  # a cel-python runner; None if the expression does not compile
    compile_error: str = ""


@dataclass(frozen=True)
class MatchResult:
    matches: bool
    error: str | None = None  # the evaluation errors, when no condition was false
    failed_condition: str = ""  # the condition that was false


@cache
def _celpy() -> Any:
    """cel-python, imported on first use (it builds its grammar when imported)."""
    try:
        import celpy
    except ImportError as error:  # declared by the emulator extra; missing means a broken install
        raise CompileError("the emulated API server needs cel-python to evaluate matchConditions "
                           "(pip install 'gpuadmit[emulator]')") from error
    return celpy


@cache
def _environment() -> Any:
    return _celpy().Environment()


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Any:
    """The program for one condition; CompileError worded as the real server's compiler."""
    celpy = _celpy()
    try:
        tree = _environment().compile(expression)
    except celpy.CELParseError as error:
        line, column = error.line or 1, error.column or 1
        raise CompileError(f"compilation failed: ERROR: <input>:{line}:{column}: Syntax error: unexpected input"
                           + _caret(expression, line, column)) from None
    for token in _undeclared(tree):
        raise CompileError(f"compilation failed: ERROR: <input>:{token.line}:{token.column}: undeclared reference "
                           f"to '{token}' (in container '')" + _caret(expression, token.line, token.column))
    if not _may_be_bool(tree):
        raise CompileError("must evaluate to bool")
    return _environment().program(tree, functions={**_heterogeneous_equality(), **_authorizer_functions()})


@cache
def _heterogeneous_equality() -> dict[str, Any]:
    """``==`` and ``!=`` across types, as cel-go in Kubernetes: a map is not equal to null (cel-python
    raises "no such overload" for ``object != null``)."""
    celpy = _celpy()

    def equal(a: Any, b: Any) -> Any:
        if isinstance(a, celpy.CELEvalError):
            return a
        if isinstance(b, celpy.CELEvalError):
            return b
        try:
            return celpy.celtypes.BoolType(bool(a == b))
        except TypeError:  # values of different types are simply not equal
            return celpy.celtypes.BoolType(False)

    def not_equal(a: Any, b: Any) -> Any:
        result = equal(a, b)
        return result if isinstance(result, celpy.CELEvalError) else celpy.celtypes.BoolType(not result)

    return {"_==_": equal, "_!=_": not_equal}


def compile_conditions(conditions: Any) -> tuple[MatchCondition, ...]:
    """The conditions of a stored webhook (checked when written; one that does not compile anyway
    is an evaluation error, as in the real server)."""
    compiled = []
    for condition in conditions if isinstance(conditions, list) else ():
        if not isinstance(condition, Mapping):
            continue
        name, expression = str(condition.get("name") or ""), str(condition.get("expression") or "")
        try:
            compiled.append(MatchCondition(name, expression, compile_expression(expression.strip())))
        except CompileError as error:
            compiled.append(MatchCondition(name, expression, None, str(error)))
    return tuple(compiled)


def match_condition_problems(conditions: Any, at: str) -> list[str]:
    """What the real server's validation refuses in a webhook's ``matchConditions``, as
    ``"<field>: <problem>"`` texts (validateMatchConditions)."""
    if conditions is None:
        return []
    if not isinstance(conditions, list):
        return [f"{at}: Invalid value: must be a list"]
    problems = []
    if len(conditions) > MAX_MATCH_CONDITIONS:
        problems.append(f"{at}: Too many: {len(conditions)}: must have at most {MAX_MATCH_CONDITIONS} items")
    names: set[str] = set()
    for index, condition in enumerate(conditions):
        where = f"{at}[{index}]"
        if not isinstance(condition, Mapping):
            problems.append(f"{where}: Invalid value: must be an object")
            continue
        name, expression = condition.get("name"), condition.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            problems.append(f"{where}.expression: Required value")
        else:
            try:
                compile_expression(expression.strip())
            except CompileError as error:
                problems.append(f'{where}.expression: Invalid value: "{expression.strip()}": {error}')
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: Required value")
            continue
        problems += [f'{where}.name: Invalid value: "{name}": {problem}' for problem in _qualified_name_problems(name)]
        if name in names:
            problems.append(f'{where}.name: Duplicate value: "{name}"')
        names.add(name)
    return problems


@cache
def _authorizer_functions() -> dict[str, Any]:
    """The authorizer library for the emulator's one user, ``kubernetes-admin`` in ``system:masters``,
    whom every check allows: the builders return their receiver, ``check`` a decision, and the
    decision is ``allowed()``, with no ``reason()`` and no error."""
    celpy = _celpy()
    decision = celpy.celtypes.MapType({celpy.celtypes.StringType("decision"): celpy.celtypes.StringType("allow")})

    def builder(receiver: Any, *_arguments: Any) -> Any:
        return receiver

    functions: dict[str, Any] = {name: builder for name in AUTHORIZER_BUILDERS}
    functions.update(check=lambda _receiver, _verb: decision,
                     allowed=lambda _decision: celpy.celtypes.BoolType(True),
                     errored=lambda _decision: celpy.celtypes.BoolType(False),
                     reason=lambda _decision: celpy.celtypes.StringType(""),
                     error=lambda _decision: celpy.celtypes.StringType(""))
    return functions


def evaluate(conditions: Sequence[MatchCondition], obj: Any, old: Any, request: Mapping[str, Any]) -> MatchResult:
    """matcher.Match: any false skips; else any error is the result's error; else a match."""
    celpy = _celpy()
    activation = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                  "request": celpy.json_to_cel(dict(request)),
                  "authorizer": celpy.json_to_cel({"requestResource": {"authorizer": "requestResource"}})}
    errors = []
    for condition in conditions:
        if condition.program is None:
            errors.append(f"compilation error: {condition.compile_error}")
            continue
        try:
            result = condition.program.evaluate(activation)
        except Exception as error:  # noqa: BLE001 - cel-python raises evaluation errors of several types
            errors.append(f"expression '{condition.expression}' resulted in error: {_go_wording(error)}")
            continue
        if isinstance(result, celpy.CELEvalError):  # an error can also come back as a value
            errors.append(f"expression '{condition.expression}' resulted in error: {_go_wording(result)}")
        elif isinstance(result, celpy.celtypes.BoolType) and not result:  # only false skips: cel-go's `== False`
            return MatchResult(False, failed_condition=condition.name)
    if errors:
        return MatchResult(False, errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
    return MatchResult(True)


def condition_request(review_request: Mapping[str, Any]) -> dict[str, Any]:
    """The ``request`` variable: the AdmissionRequest as the real server builds it for CEL
    (CreateAdmissionRequest): no objects, no uid of its own, empty optional fields left out."""
    request = {key: value for key, value in review_request.items()
               if key not in ("object", "oldObject") and value not in ("", None)}
    request["uid"] = ""
    request["kind"], request["resource"] = review_request.get("requestKind"), review_request.get("requestResource")
    return request


# -- what cel-go's checker would say ----------------------------------------------------------------

def _caret(expression: str, line: int, column: int) -> str:
    source = expression.splitlines()[line - 1] if expression.splitlines() else expression
    return f"\n | {source}\n | {'.' * (column - 1)}^"


def _undeclared(tree: Any) -> Iterable[Any]:
    """The identifiers that name nothing declared, in order (a macro's variable is declared)."""
    from lark import Tree

    bound = {*BOUND_VARIABLES, *UNBOUND_VARIABLES, *TYPE_NAMES}
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in MACROS and len(node.children) > 2:
            arguments = node.children[2]
            if isinstance(arguments, Tree) and arguments.children:
                bound |= {str(ident.children[0]) for ident in arguments.children[0].iter_subtrees()
                          if ident.data == "ident"}
    return [ident.children[0] for ident in tree.iter_subtrees_topdown()
            if ident.data == "ident" and str(ident.children[0]) not in bound]


def _may_be_bool(tree: Any) -> bool:
    """Whether the expression's static type may be bool (see the module docstring)."""
    from lark import Token, Tree

    node = tree
    while True:
        children = [child for child in node.children if child is not None]
        if node.data == "paren_expr" or (node.data in _WRAPPERS and len(children) == 1
                                         and isinstance(children[0], Tree)):
            node = children[0]
            continue
        break
    if node.data == "expr" and len(children) == 3:  # a ternary: both branches
        return _may_be_bool(children[1]) and _may_be_bool(children[2])
    if node.data in ("conditionalor", "conditionaland") or node.data.startswith("relation_"):
        return True
    if node.data in ("relation", "addition", "multiplication") and children:
        return isinstance(children[0], Tree) and children[0].data.startswith("relation_")
    if node.data == "unary":
        return bool(children) and isinstance(children[0], Tree) and children[0].data == "unary_not"
    if node.data == "literal":
        return isinstance(children[0], Token) and children[0].type == "BOOL_LIT"
    if node.data == "member_dot":  # a field of a dynamic object; request's fields are typed
        target = children[0]
        return str(children[1]) == "dryRun" and any(
            sub.data == "ident" and str(sub.children[0]) == "request" for sub in target.iter_subtrees())
    if node.data == "member_dot_arg":
        method = str(children[1])
        return method in BOOL_METHODS or method not in NON_BOOL_METHODS
    if node.data == "ident_arg":
        function = str(children[0])
        return function in BOOL_FUNCTIONS or function not in NON_BOOL_FUNCTIONS
    return False  # an identifier, an index, a list or map literal


def _go_wording(error: Any) -> str:
    """cel-go's words for cel-python's commonest evaluation errors."""
    message = str(error.args[0]) if getattr(error, "args", None) else str(error)
    extra = error.args[2] if len(getattr(error, "args", ())) > 2 else None
    if message.startswith("no such member in mapping: "):
        return "no such key: " + message.removeprefix("no such member in mapping: ").strip("'")
    if message == "no such key" and extra:
        return f"no such key: {extra[0]}"
    if message.startswith("undeclared reference to '"):
        return f"no such attribute(s): {message.split(chr(39))[1]}"
    return message.splitlines()[0] if message else type(error).__name__


def _qualified_name_problems(name: str) -> list[str]:
    """ValidateQualifiedName: an optional DNS subdomain prefix and ``/``, then a name part."""
    from kubeapi_emulator.metadata import _DNS_SUBDOMAIN, _LABEL_NAME

    prefix, slash, part = name.rpartition("/")
    problems = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                        "characters, '-' or '.', and must start and end with an alphanumeric character")
    if not part or len(part) > MAX_NAME_PART or not _LABEL_NAME.fullmatch(part):
        problems.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                        "end with an alphanumeric character (at most 63 characters)")
    return problems
