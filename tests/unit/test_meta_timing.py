"""Meta test: no test asserts a wall-clock upper bound under one second.

Such bounds fail on a loaded machine. A test observes an event or an order of events instead
(an Event set, a hook counter, which of two things happened first), or, where only a sanity
bound on a duration is wanted, a bound of at least one second.

The scan reads every test module's syntax tree and looks, inside ``assert`` statements, for a
comparison that bounds a timing value from above (``<``/``<=``, or ``>``/``>=`` written the other
way round) by a number under 1. A timing value is an expression that calls ``time.monotonic``,
``time.perf_counter`` or ``time.time``, or a name or attribute named like a duration
(``elapsed``, ``waited``, ``took``...). The bound is evaluated when it is made of literals and
of numeric constants of the module (its own or imported ones); any other bound is left alone.
Lower bounds (``0.2 < waited``: the timeout did wait) are fine.
"""

from __future__ import annotations

import ast
import importlib
import operator
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns"}
TIMING_NAMES = {"elapsed", "waited", "took", "duration", "spent", "held", "cut", "latency"}
LIMIT = 1.0

_ARITHMETIC: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def is_timing(node: ast.AST) -> bool:
    """True if ``node`` reads a clock or a value named like a duration."""
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in CLOCKS and isinstance(sub.func.value, ast.Name)
                and sub.func.value.id == "time"):
            return True
        if isinstance(sub, ast.Name) and sub.id in TIMING_NAMES:
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in TIMING_NAMES:
            return True
    return False


def constants(tree: ast.Module) -> dict[str, float]:
    """The module's numeric constants: its own ``NAME = number`` and imported names."""
    found: dict[str, float] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            value = evaluate(node.value, found)
            if value is not None:
                found[node.targets[0].id] = value
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            try:
                module = importlib.import_module(node.module)
            except Exception:
                continue
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found[alias.asname or alias.name] = value
    return found


def evaluate(node: ast.AST, names: dict[str, float]) -> float | None:
    """The number ``node`` stands for, from literals and ``names``; None if not known."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = evaluate(node.left, names), evaluate(node.right, names)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return float(_ARITHMETIC[type(node.op)](left, right))
    return None


def short_upper_bounds(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of each assertion bounding a timing value from above by less than 1 s."""
    tree = ast.parse(source)
    names = constants(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for compare in ast.walk(node.test):
            if not isinstance(compare, ast.Compare):
                continue
            operands = [compare.left, *compare.comparators]
            for index, op in enumerate(compare.ops):
                left, right = operands[index], operands[index + 1]
                if isinstance(op, (ast.Lt, ast.LtE)):
                    value, bound = left, right
                elif isinstance(op, (ast.Gt, ast.GtE)):
                    value, bound = right, left
                else:
                    continue
                limit = evaluate(bound, names)
                if limit is not None and limit < LIMIT and is_timing(value):
                    yield node.lineno, ast.unparse(compare)


def test_no_test_asserts_a_wall_clock_bound_under_one_second() -> None:
    found = [f"{path.relative_to(TESTS)}:{line}: {text}"
             for path in sorted(TESTS.rglob("*.py"))
             for line, text in short_upper_bounds(path.read_text(encoding="utf-8"))]
    assert not found, "wall-clock bounds under 1 s (observe an event instead):\n" + "\n".join(
        found)


def test_the_scan_finds_short_bounds_and_only_those() -> None:
    flagged = """
import time
from gnetserver.proto.tcp import LINGER_SECONDS
HALF = 0.5
def t(started, elapsed, waited, responder, took):
    assert time.monotonic() - started < 0.5
    assert elapsed <= HALF
    assert 0.2 < waited < 0.9
    assert 0.5 > elapsed
    assert ok and responder.held[0] < LINGER_SECONDS / 2
    assert max(took) < 0.75, took
"""
    assert [line for line, _ in short_upper_bounds(flagged)] == [6, 7, 8, 9, 10, 11]
    fine = """
import time
def t(started, elapsed, waited, count, ratio, sizes, seconds):
    assert time.monotonic() - started < 1.0
    assert 0.2 < waited < 4.0
    assert elapsed >= 0.25
    assert count < 0.5
    assert ratio <= 0.9
    assert len(sizes) < 0.5 * 2
    assert seconds < 0.5
    if elapsed < 0.5:
        pass
"""
    assert list(short_upper_bounds(fine)) == []
