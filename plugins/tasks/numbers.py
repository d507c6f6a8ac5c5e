r"""Numeric answers of property QA: robust parsing and per-property MAE with the valid-answer rate.

Unlike the reference implementation (known defect 3), integers are valid answers.

What counts as a number (:data:`NUMBER`): an optional sign (``+``, ``-``, unicode minus), digits with an
optional decimal part (``12``, ``-1.23``, ``.5``, ``1,234.5`` with comma thousands separators), and an
optional power of ten (``1.2e-3``, ``1.2 x 10^-3``, ``1.2×10⁻³``, ``1.2 * 10**-3``). Not numbers: digits
glued to letters before them or to a hyphen (``C7H6O2``, ``GFN2-xTB``, ``HOMO-1``), locants (``2-methyl``,
``2,4-dinitro``), powers in units (the 2 of ``Å²``), parts of dotted strings (``1.2.3``), uncertainties
(``± 0.3``), the upper bound of a hyphenated range (``1.2-1.5`` gives 1.2), and anything that is not finite.
A decimal comma (``1,5``) is not understood.

Which number when several appear (:func:`parse_number`), first rule that finds one:

1. with a ``unit``, the first number followed by that unit (or a known spelling of it, :data:`UNIT_ALIASES`);
2. the first number after the first answer marker (``is``, ``are``, ``was``, ``were``, ``equals``, ``=``,
   ``:``, ``≈``, ``~``): "The LogP of this molecule is about 1.2, from 3 rings" -> 1.2;
3. the last number: generated text tends to end with its answer.

The unit only selects; values are never converted between units.

3D-MoLM's parser (``task.number_parser: reference``, :func:`parse_reference_number`): the first match of
``-?\d+\.\d+`` (so an answer without a decimal point is invalid), read_generalist_results.py of
lsh0520/3D-MoLM. Its plausibility ranges (:data:`REFERENCE_RANGES`) count an answer outside its property's
range as invalid; :func:`property_errors` reports the MAE and rate both with and without them.
"""

import math
import re
import statistics
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from molbridge.core.errors import MolbridgeError

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})

NUMBER = re.compile(
    r"""
    (?<![\w.+^-])(?<!\d,)                  # not glued to a word, formula, power (Å^2), dotted string, list
    (?P<sign>[+-])?
    (?P<mantissa>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:[eE](?P<e>[+-]?\d+)|\s*[x×*·]\s*10\s*(?:\^|\*\*)\s*(?P<ten>[+-]?\d+))?
    (?!\d|,\d|\.\d|-[A-Za-z])              # not a locant (2-methyl, 2,4-) nor part of 1.2.3
    """,
    re.VERBOSE,
)
ANSWER_MARKER = re.compile(r"\b(?:is|are|was|were|equals)\b|[=:≈~]", re.IGNORECASE)

#: Spellings accepted for the units of 3D-MoLM's properties (after superscripts become ``^``).
UNIT_ALIASES = {
    "eV": ("eV", "electronvolts", "electronvolt", "electron volts", "electron volt"),
    "g/mol": ("g/mol", "g mol^-1", "g·mol^-1", "g mol-1", "g·mol-1", "Da", "daltons", "dalton", "amu"),
    "Å^2": ("Å^2", "Å2", "A^2", "A2", "square angstroms", "square ångströms", "angstrom^2", "angstroms^2"),
}


def _normalise(text: str) -> str:
    """NFC (so the angstrom sign is Å), unicode minus signs to ``-``, superscript runs to ``^digits``."""
    text = unicodedata.normalize("NFC", text).translate(_MINUS)
    return re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+", lambda m: "^" + m.group().translate(_SUPERSCRIPTS), text)


def _value(match: re.Match) -> float | None:
    exponent = match["e"] or match["ten"] or "0"
    value = float(f"{match['sign'] or ''}{match['mantissa'].replace(',', '')}e{exponent}")
    return value if math.isfinite(value) else None


def _unit_pattern(unit: str) -> re.Pattern:
    unit = _normalise(unit).strip()
    spellings = next((aliases for aliases in UNIT_ALIASES.values() if unit in aliases), (unit,))
    alternatives = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
    return re.compile(rf"\s*(?:{alternatives})(?![A-Za-z])", re.IGNORECASE)


def numbers(text: str) -> list[tuple[int, int, float]]:
    """Every number in ``text`` as (start, end, value), positions in the normalised text; uncertainties
    (the ``0.3`` of ``1.2 ± 0.3`` or ``1.2 +/- 0.3``) are not answers and are left out."""
    text = _normalise(text)
    found = ((m.start(), m.end(), _value(m)) for m in NUMBER.finditer(text))
    return [
        (start, end, value)
        for start, end, value in found
        if value is not None and not text[:start].rstrip().endswith(("±", "+/-", "+/"))
    ]


def parse_number(text: str, unit: str | None = None) -> float | None:
    """The answer's number by the module's selection rule, or None when ``text`` holds no number."""
    candidates = numbers(text)
    if not candidates:
        return None
    text = _normalise(text)
    if unit:
        pattern = _unit_pattern(unit)
        with_unit = [value for _, end, value in candidates if pattern.match(text, end)]
        if with_unit:
            return with_unit[0]
    marker = ANSWER_MARKER.search(text)
    if marker:
        after = [value for start, _, value in candidates if start >= marker.end()]
        if after:
            return after[0]
    return candidates[-1][2]


REFERENCE_NUMBER = re.compile(r"-?\d+\.\d+")


def parse_reference_number(text: str, unit: str | None = None) -> float | None:
    """3D-MoLM's rule: the first ``-?digits.digits`` in the text (integers are not answers); ``unit`` unused."""
    match = REFERENCE_NUMBER.search(text)
    return float(match.group()) if match else None


#: ``task.number_parser`` -> parser(text, unit)
PARSERS: dict[str, Callable[[str, str | None], float | None]] = {
    "molbridge": parse_number,
    "reference": parse_reference_number,
}

#: 3D-MoLM's plausibility range per property (read_generalist_results.py:67-108): outside it, an answer is
#: invalid. Interval notation: ``(`` / ``)`` open, ``[`` / ``]`` closed; ``inf`` for no bound.
REFERENCE_RANGES = {
    "HOMO": "(-20, 20)",
    "LUMO": "(-20, 20)",
    "HOMO-LUMO Gap": "(-20, 20)",
    "SCF Energy": "(-5, 0)",
    "LogP": "(-30, 50)",
    "Topological Polar Surface Area": "[0, 2000)",
    "Complexity": "[0, 10000)",
    "Molecular Weight": "(0, 4000)",
}
_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """A range of plausible values, e.g. ``Interval.parse("[0, 2000)")``."""

    low: float
    high: float
    closed_low: bool = False
    closed_high: bool = False

    @classmethod
    def parse(cls, text: str) -> "Interval":
        """``(a, b)``, ``[a, b)``, ``(a, b]`` or ``[a, b]``; ``-inf``/``inf`` for an open end. ValueError otherwise."""
        match = _INTERVAL.match(str(text))
        if match is None:
            raise ValueError(f"{text!r} is not an interval like '(-20, 20)' or '[0, 2000)'")
        left, low, high, right = match.groups()
        try:
            bounds = float(low), float(high)
        except ValueError:
            raise ValueError(f"{text!r}: bounds must be numbers (or -inf/inf)") from None
        if bounds[0] >= bounds[1]:
            raise ValueError(f"{text!r}: the lower bound must be below the upper one")
        return cls(bounds[0], bounds[1], left == "[", right == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.closed_low else value > self.low
        below = value <= self.high if self.closed_high else value < self.high
        return above and below


UNBOUNDED = Interval(-math.inf, math.inf)


def _target_value(target: float | str, index: int, prop: str, unit: str | None, parse=parse_number) -> float:
    value = parse(target, unit) if isinstance(target, str) else target
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise MolbridgeError(f"QA record {index} ({prop}): target {target!r} is not a finite number")
    return float(value)


def property_errors(
    predictions: Sequence[str],
    targets: Sequence[float | str],
    properties: Sequence[str],
    units: Mapping[str, str] | None = None,
    parser: str = "molbridge",
    ranges: Mapping[str, Interval] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per property: MAE and median absolute error over valid answers (None when there is none), valid-answer
    rate, n and n_valid. The median is there because one wild answer (an energy's "3000 eV" to a LogP question)
    can make a property's MAE alone; it says how the typical answer does.

    ``targets`` are numbers or answer texts (parsed like predictions; one without a number is an error naming
    the record). ``units`` maps a property to its unit, used to pick the number (see the module docstring).
    ``parser`` names the rule (:data:`PARSERS`). With ``ranges`` (property -> plausible :class:`Interval`;
    a property without one has no bound), each property also gets ``mae_in_range`` and ``in_range_rate``: the
    MAE over valid answers inside the range and the share of all answers that are valid and inside it
    (3D-MoLM's MAE and valid ratio).
    An extra entry ``"overall"`` gives n, n_valid and valid_rate over all records (and in_range_rate with
    ``ranges``); no overall MAE, since properties have different units.
    """
    if not len(predictions) == len(targets) == len(properties):
        raise MolbridgeError(
            f"QA metrics: {len(predictions)} predictions, {len(targets)} targets, {len(properties)} properties"
        )
    units, parse = units or {}, PARSERS[parser]
    errors: dict[str, list[float | None]] = {}
    in_range: dict[str, list[float | None]] = {}
    for i, (prediction, target, prop) in enumerate(zip(predictions, targets, properties, strict=True)):
        if prop == "overall":
            raise MolbridgeError(f"QA record {i}: 'overall' is reserved for the summary, not a property name")
        if not isinstance(prediction, str):
            raise MolbridgeError(f"QA record {i} ({prop}): prediction is {type(prediction).__name__}, expected str")
        unit = units.get(prop)
        answer = parse(prediction, unit)
        truth = _target_value(target, i, prop, unit, parse)
        error = None if answer is None else abs(answer - truth)
        errors.setdefault(prop, []).append(error)
        plausible = ranges is not None and answer is not None and answer in ranges.get(prop, UNBOUNDED)
        in_range.setdefault(prop, []).append(error if plausible else None)
    report = {prop: _summary(errs) for prop, errs in errors.items()}
    n, n_valid = len(predictions), sum(r["n_valid"] for r in report.values())
    report["overall"] = {"n": n, "n_valid": n_valid, "valid_rate": n_valid / n if n else 0.0}
    if ranges is not None:
        for prop, errs in in_range.items():
            inside = _summary(errs)
            report[prop] |= {"mae_in_range": inside["mae"], "in_range_rate": inside["valid_rate"]}
        n_in = sum(e is not None for errs in in_range.values() for e in errs)
        report["overall"]["in_range_rate"] = n_in / n if n else 0.0
    return report


def _summary(errors: list[float | None]) -> dict[str, float | int | None]:
    valid = [e for e in errors if e is not None]
    return {
        "mae": sum(valid) / len(valid) if valid else None,
        "medae": statistics.median(valid) if valid else None,
        "valid_rate": len(valid) / len(errors),
        "n": len(errors),
        "n_valid": len(valid),
    }


def flat_metrics(report: Mapping[str, Mapping[str, float | int | None]], prefix: str = "") -> dict[str, float]:
    """``property_errors``' report as flat ``{prefix}{property}/{stat}`` numbers for MLflow (which takes no None:
    an MAE without any valid answer is left out; valid_rate 0 says why)."""
    return {
        f"{prefix}{prop}/{stat}": float(value)
        for prop, stats in report.items()
        for stat, value in stats.items()
        if value is not None
    }
