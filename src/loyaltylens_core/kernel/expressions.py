"""A small, safe expression language for catalogue rules and ranking formulas.

``tier in ("gold", "platinum") and recency_days <= 30`` or ``propensity * value``: parsed
with Python's own parser, then every node is checked against a short allow-list and
compiled into plain closures. Nothing reaches ``eval``: there are no calls except
``min``/``max``/``abs``, no attribute or item access, no comprehensions, and names are
only the ones the caller declares. Types are checked at parse time (a number compared
with a string, or ``tier == "gld"``, is an error when the catalogue is loaded, not a
surprise on the millionth customer), so evaluation cannot fail except by dividing by zero.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import operator
from typing import Any, Callable, Mapping

MAX_LENGTH = 500  # characters: a rule, not a program
MAX_NODES = 120
MAX_EXPONENT = 8  # `x ** 1e9` would hang a worker; exponents are small literals

Value = float | str | bool
Evaluator = Callable[[Mapping[str, Any]], Any]


class ExpressionError(ValueError):
    """A rule that cannot be parsed, names something unknown, or mixes types. ``column``
    is where in the text (1-based), when known."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message if column is None else f"{message} (at column {column})")
        self.column = column


@dataclasses.dataclass(frozen=True)
class Names:
    """What an expression may refer to: each name's type ("number", "string" or "bool"),
    and for strings with a closed set of values (tier, channel) that set, so a typo in a
    literal is caught at parse time."""

    types: Mapping[str, str]
    values: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hashed on every cached parse: computed once.
        key = (tuple(sorted(self.types.items())), tuple(sorted((k, tuple(sorted(v))) for k, v in self.values.items())))
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return int(self.__dict__["_hash"])


@dataclasses.dataclass(frozen=True)
class Expression:
    """A parsed, checked expression: ``evaluate(values)`` with one value per name used."""

    text: str
    kind: str  # "number", "string" or "bool": what it evaluates to
    names: frozenset[str]
    evaluate: Evaluator


_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs}


@functools.lru_cache(maxsize=4096)
def parse(text: str, names: Names, want: str | None = None) -> Expression:
    """``text`` parsed and checked against ``names``; ``want`` ("bool" for rules, "number"
    for ranking formulas) is the type it must have. Cached: a catalogue repeats its rules."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"is {len(text)} characters long; the limit is {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"is not a valid expression: {exc.msg}", exc.offset) from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise ExpressionError(f"has {count} parts; the limit is {MAX_NODES}")
    compiler = _Compiler(names)
    kind, evaluate = compiler.compile(tree.body)
    if want is not None and kind != want:
        raise ExpressionError(f"gives a {kind}, not a {'true/false rule' if want == 'bool' else want}")
    return Expression(text, kind, frozenset(compiler.used), evaluate)


class _Compiler:
    """Checks each node and turns it into a closure; ``used`` collects the names read."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.used: set[str] = set()

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        return ExpressionError(message, None if col is None else col + 1)

    def compile(self, node: ast.expr) -> tuple[str, Evaluator]:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"uses {_describe(node)}, which rules do not allow")
        result: tuple[str, Evaluator] = method(node)
        return result

    def _Constant(self, node: ast.Constant) -> tuple[str, Evaluator]:
        value = node.value
        if isinstance(value, bool):
            return "bool", lambda _v, value=value: value
        if isinstance(value, (int, float)) and math.isfinite(value):
            number = float(value)
            return "number", lambda _v, number=number: number
        if isinstance(value, str):
            return "string", lambda _v, value=value: value
        raise self.fail(node, f"uses the literal {value!r}; only numbers, strings, True and False are allowed")

    def _Name(self, node: ast.Name) -> tuple[str, Evaluator]:
        if node.id in ("True", "False"):
            value = node.id == "True"
            return "bool", lambda _v, value=value: value
        kind = self.names.types.get(node.id)
        if kind is None:
            known = ", ".join(sorted(self.names.types))
            raise self.fail(node, f"names {node.id!r}, which is not known here; known names: {known}")
        self.used.add(node.id)
        name = node.id
        return kind, lambda v, name=name: v[name]

    def _BoolOp(self, node: ast.BoolOp) -> tuple[str, Evaluator]:
        parts = [self._want(v, "bool", "and/or joins true/false rules") for v in node.values]
        if isinstance(node.op, ast.And):
            return "bool", lambda v, parts=parts: all(p(v) for p in parts)
        return "bool", lambda v, parts=parts: any(p(v) for p in parts)

    def _UnaryOp(self, node: ast.UnaryOp) -> tuple[str, Evaluator]:
        if isinstance(node.op, ast.Not):
            inner = self._want(node.operand, "bool", "not applies to a true/false rule")
            return "bool", lambda v, inner=inner: not inner(v)
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self._want(node.operand, "number", "a sign applies to a number")
            if isinstance(node.op, ast.USub):
                return "number", lambda v, inner=inner: -inner(v)
            return "number", inner
        raise self.fail(node, f"uses {_describe(node)}, which rules do not allow")

    def _BinOp(self, node: ast.BinOp) -> tuple[str, Evaluator]:
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            raise self.fail(node, f"uses {_describe(node)}, which rules do not allow")
        if isinstance(node.op, ast.Pow):
            exponent = node.right
            if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, ast.USub):
                exponent = exponent.operand
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, (int, float))
                    and not isinstance(exponent.value, bool) and abs(exponent.value) <= MAX_EXPONENT):
                raise self.fail(node, f"raises to a power other than a number literal up to {MAX_EXPONENT}")
        left = self._want(node.left, "number", "arithmetic works on numbers")
        right = self._want(node.right, "number", "arithmetic works on numbers")
        return "number", lambda v, op=op, left=left, right=right: op(left(v), right(v))

    def _Compare(self, node: ast.Compare) -> tuple[str, Evaluator]:
        steps: list[Evaluator] = []
        left_node = node.left
        left_kind, left = self.compile(left_node)
        for op_node, right_node in zip(node.ops, node.comparators):
            if isinstance(op_node, (ast.In, ast.NotIn)):
                steps.append(self._membership(left_node, left_kind, left, right_node, isinstance(op_node, ast.NotIn)))
                left_node, (left_kind, left) = right_node, ("tuple", lambda _v: None)
                continue
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise self.fail(node, f"uses the comparison {type(op_node).__name__}, which rules do not allow")
            right_kind, right = self.compile(right_node)
            if left_kind != right_kind:
                raise self.fail(right_node, f"compares a {left_kind} with a {right_kind}")
            if left_kind == "string" and not isinstance(op_node, (ast.Eq, ast.NotEq)):
                raise self.fail(right_node, "orders strings; compare them with == or != or in")
            self._check_literal(left_node, right_node)
            self._check_literal(right_node, left_node)
            steps.append(_comparison(op, left, right))
            left_node, left_kind, left = right_node, right_kind, right
        if len(steps) == 1:
            return "bool", steps[0]
        return "bool", lambda v, steps=steps: all(step(v) for step in steps)

    def _membership(
        self, left_node: ast.expr, kind: str, left: Evaluator, right_node: ast.expr, negate: bool
    ) -> Evaluator:
        if not isinstance(right_node, (ast.Tuple, ast.List, ast.Set)):
            raise self.fail(right_node, "uses `in` with something other than a literal list, e.g. (\"gold\", \"platinum\")")
        members: list[Any] = []
        for element in right_node.elts:
            if not isinstance(element, ast.Constant) or isinstance(element.value, bool):
                raise self.fail(element, "lists only literal numbers or strings after `in`")
            element_kind, _ = self._Constant(element)
            if element_kind != kind:
                raise self.fail(element, f"looks for a {kind} among {element_kind}s")
            self._check_literal(left_node, element)
            value: Any = element.value
            members.append(float(value) if kind == "number" else value)
        frozen = frozenset(members)

        def member(v: Mapping[str, Any]) -> bool:
            return (left(v) in frozen) != negate

        return member

    def _check_literal(self, name_node: ast.expr, literal: ast.expr) -> None:
        """``tier == "gld"`` can never be true: say so while the catalogue loads."""
        if isinstance(name_node, ast.Name) and isinstance(literal, ast.Constant) and isinstance(literal.value, str):
            allowed = self.names.values.get(name_node.id)
            if allowed is not None and literal.value not in allowed:
                raise self.fail(literal, f"compares {name_node.id} with {literal.value!r}, which it never is; "
                                         f"it is one of {', '.join(sorted(allowed))}")

    def _IfExp(self, node: ast.IfExp) -> tuple[str, Evaluator]:
        test = self._want(node.test, "bool", "`if` tests a true/false rule")
        body_kind, body = self.compile(node.body)
        else_kind, orelse = self.compile(node.orelse)
        if body_kind != else_kind:
            raise self.fail(node, f"gives a {body_kind} on one side of `if` and a {else_kind} on the other")
        return body_kind, lambda v, test=test, body=body, orelse=orelse: body(v) if test(v) else orelse(v)

    def _Call(self, node: ast.Call) -> tuple[str, Evaluator]:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise self.fail(node, f"calls {_describe(node.func)}; the only functions are {', '.join(_FUNCTIONS)}")
        if not node.args or (node.func.id == "abs" and len(node.args) != 1):
            raise self.fail(node, f"calls {node.func.id} with the wrong number of arguments")
        if node.func.id != "abs" and len(node.args) < 2:
            raise self.fail(node, f"calls {node.func.id} with one argument; give it two or more")
        args = [self._want(a, "number", f"{node.func.id} works on numbers") for a in node.args]
        fn = _FUNCTIONS[node.func.id]
        return "number", lambda v, fn=fn, args=args: fn(*(a(v) for a in args))

    def _want(self, node: ast.expr, kind: str, why: str) -> Evaluator:
        got, evaluate = self.compile(node)
        if got != kind:
            raise self.fail(node, f"{why}, but this is a {got}")
        return evaluate


def _comparison(op: Callable[[Any, Any], bool], left: Evaluator, right: Evaluator) -> Evaluator:
    def compare(v: Mapping[str, Any]) -> bool:
        return op(left(v), right(v))

    return compare


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    if isinstance(node, ast.Subscript):
        return "indexing ([...])"
    if isinstance(node, ast.Name):
        return repr(node.id)
    if isinstance(node, ast.Lambda):
        return "lambda"
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return "a comprehension"
    if isinstance(node, ast.NamedExpr):
        return "assignment (:=)"
    if isinstance(node, ast.BinOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return type(node).__name__
