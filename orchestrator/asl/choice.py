"""Choice rules: every comparison operator of ASL, And, Or and Not, checked on load and evaluated purely.

A rule compares ``Variable`` (a path into the Choice's effective input) with a literal or, for the
``...Path`` operators, with the value at another path. A value of another type than the operator's
makes the comparison false, as the specification says; a ``Variable`` (or ``...Path``) that does not
resolve is States.Runtime, except under ``IsPresent``, which asks exactly that.
"""

import re
from datetime import datetime
from typing import Any

from orchestrator.asl.jsonpath import PathError, select
from orchestrator.asl.jsonpath import parse as parse_path

_KINDS = {"String": str, "Numeric": (int, float), "Boolean": bool, "Timestamp": str}
_RELATIONS = {
    "Equals": lambda a, b: a == b,
    "LessThan": lambda a, b: a < b,
    "GreaterThan": lambda a, b: a > b,
    "LessThanEquals": lambda a, b: a <= b,
    "GreaterThanEquals": lambda a, b: a >= b,
}
COMPARISONS: dict[str, tuple[str, str]] = {
    f"{kind}{relation}": (kind, relation)
    for kind in _KINDS
    for relation in _RELATIONS
    if kind != "Boolean" or relation == "Equals"
}
TESTS = {"IsNull", "IsPresent", "IsNumeric", "IsString", "IsBoolean", "IsTimestamp"}
OPERATORS = set(COMPARISONS) | {f"{name}Path" for name in COMPARISONS} | TESTS | {"StringMatches"}
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class ChoiceError(ValueError):
    """A rule that cannot be evaluated on this input (States.Runtime)."""


def check(rule: Any, *, top: bool, where: str = "Choices") -> None:
    """Raise ValueError naming the rule that is malformed."""
    if not isinstance(rule, dict):
        raise ValueError(f"{where}: a rule is an object")
    allowed = {"Next", "Comment"} if top else {"Comment"}
    if top and not isinstance(rule.get("Next"), str):
        raise ValueError(f"{where}: a top-level rule needs Next")
    if not top and "Next" in rule:
        raise ValueError(f"{where}: a nested rule has no Next")
    combinators = [key for key in ("And", "Or", "Not") if key in rule]
    operators = [key for key in rule if key in OPERATORS]
    unknown = set(rule) - allowed - OPERATORS - {"And", "Or", "Not", "Variable"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    if len(combinators) + len(operators) != 1:
        raise ValueError(f"{where}: a rule has exactly one operator (or one of And, Or, Not)")
    if combinators:
        if "Variable" in rule:
            raise ValueError(f"{where}: {combinators[0]} takes no Variable")
        if combinators[0] == "Not":
            check(rule["Not"], top=False, where=f"{where}.Not")
            return
        rules = rule[combinators[0]]
        if not isinstance(rules, list) or not rules:
            raise ValueError(f"{where}: {combinators[0]} takes a non-empty list of rules")
        for i, inner in enumerate(rules):
            check(inner, top=False, where=f"{where}.{combinators[0]}[{i}]")
        return
    operator = operators[0]
    _path(rule.get("Variable"), f"{where}.Variable")
    operand = rule[operator]
    if operator.endswith("Path"):
        _path(operand, f"{where}.{operator}")
    elif operator in TESTS:
        if not isinstance(operand, bool):
            raise ValueError(f"{where}.{operator} takes true or false")
    elif operator == "StringMatches" or COMPARISONS[operator][0] in ("String", "Timestamp"):
        if not isinstance(operand, str):
            raise ValueError(f"{where}.{operator} takes a string")
        if operator.startswith("Timestamp") and parse_timestamp(operand) is None:
            raise ValueError(f"{where}.{operator}: {operand!r} is not an RFC 3339 timestamp")
    elif COMPARISONS[operator][0] == "Numeric":
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise ValueError(f"{where}.{operator} takes a number")
    elif not isinstance(operand, bool):
        raise ValueError(f"{where}.{operator} takes true or false")


def _path(path: Any, where: str) -> None:
    if not isinstance(path, str):
        raise ValueError(f"{where} must be a path")
    try:
        parse_path(path)
    except PathError as exc:
        raise ValueError(f"{where}: {exc}") from None


def matches(rule: dict[str, Any], data: Any, context: Any = None) -> bool:
    """Whether ``rule`` holds for ``data``. Raises ChoiceError when a path it must read does not resolve."""
    if "And" in rule:
        return all(matches(inner, data, context) for inner in rule["And"])
    if "Or" in rule:
        return any(matches(inner, data, context) for inner in rule["Or"])
    if "Not" in rule:
        return not matches(rule["Not"], data, context)
    operator = next(key for key in rule if key in OPERATORS)
    operand = rule[operator]
    if operator == "IsPresent":
        try:
            select(data, rule["Variable"], context)
            present = True
        except PathError:
            present = False
        return present == operand
    value = _read(data, rule["Variable"], context)
    if operator in TESTS:
        return _test(operator, value) == operand
    if operator == "StringMatches":
        return isinstance(value, str) and _wildcard(operand).fullmatch(value) is not None
    if operator.endswith("Path"):
        operator = operator.removesuffix("Path")
        operand = _read(data, operand, context)
    kind, relation = COMPARISONS[operator]
    left, right = _typed(kind, value), _typed(kind, operand)
    if left is None or right is None:
        return False
    return _RELATIONS[relation](left, right)


def _read(data: Any, path: str, context: Any) -> Any:
    try:
        return select(data, path, context)
    except PathError as exc:
        raise ChoiceError(f"Choice rule: {exc}") from None


def _typed(kind: str, value: Any) -> Any:
    """The value as the operator's type compares it, or None when it is not of that type."""
    if kind == "Numeric":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "Boolean":
        return value if isinstance(value, bool) else None
    if kind == "Timestamp":
        return parse_timestamp(value) if isinstance(value, str) else None
    return value if isinstance(value, str) else None


def _test(operator: str, value: Any) -> bool:
    if operator == "IsNull":
        return value is None
    if operator == "IsNumeric":
        return _typed("Numeric", value) is not None
    if operator == "IsString":
        return isinstance(value, str)
    if operator == "IsBoolean":
        return isinstance(value, bool)
    return isinstance(value, str) and parse_timestamp(value) is not None


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp with its offset (Z or +hh:mm), as ASL writes them; None for anything else."""
    if not _TIMESTAMP.match(text):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _wildcard(pattern: str) -> re.Pattern[str]:
    """'*' matches any run of characters; '\\*' is a literal star and '\\\\' a literal backslash."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif pattern[i] == "*":
            out.append(".*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)
