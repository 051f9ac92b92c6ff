"""The one way the report writes a number, an interval or a speedup, so every table and sentence agrees.

Convention: a level (an alpha, a share, a p-value) is printed bare; a change (a gain, a difference against
base, head minus rest) carries its sign (`sign=True`), so "+0.020" and "0.020" never mean the same thing in
two places. A missing value is "n/a" inside a sentence and "missing" for a cell that was never measured.
"""

from __future__ import annotations

from collections.abc import Mapping


def num(x: float | None, digits: int = 3, sign: bool = False) -> str:
    """`x` to `digits` decimals, with a leading +/- when `sign`; "n/a" for None."""
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def interval(cell: Mapping | None, digits: int = 3, sign: bool = False, missing: str = "missing") -> str:
    """`value [low, high]` of a {value, low, high} CI dict; `missing` where there is no value at all."""
    if cell is None or cell.get("value") is None:
        return missing
    low, high = num(cell.get("low"), digits, sign), num(cell.get("high"), digits, sign)
    return f"{num(cell['value'], digits, sign)} [{low}, {high}]"


def bounds(cell: Mapping, digits: int = 3, sign: bool = False) -> str:
    """`[low, high]` of a CI dict (n/a where a bound is undefined, e.g. with fewer than 2 prompts)."""
    return f"[{num(cell.get('low'), digits, sign)}, {num(cell.get('high'), digits, sign)}]"


def speedup(x: float | None) -> str:
    """`1.52×`, or "not timed" for a run without wall times (baseline=false, or mode=replay)."""
    return "not timed" if x is None else f"{x:.2f}×"


def speedups(before: float | None, after: float | None) -> str:
    """Base → fine-tuned speedup; one "not timed" when neither run was timed."""
    if before is None and after is None:
        return "not timed"
    return f"{speedup(before)} → {speedup(after)}"


def rho_p(test: Mapping) -> str:
    """`+0.80 (0.03)`: a {rho, p_value} rank correlation for a table cell; "n/a" where rho is undefined."""
    return (
        "n/a" if test.get("rho") is None else f"{num(test['rho'], 2, sign=True)} ({num(test['p_value'], 2)})"
    )
