"""Argument checks shared by the library and the command lines: one line naming the argument,
what was wrong and what is allowed."""

import math
import numbers


def check_number(name, value, minimum=None, maximum=None, *, strict=False, integer=False):
    """Returns `value` if it is a finite number (an int when `integer`) in range, else raises.

    `minimum` is exclusive with `strict=True`; `maximum` is inclusive. NaN and infinities are
    refused (`nan <= 0` is False, so a plain comparison would let them through).

    Example:
    >>> check_number("learning_rate", 6e-5, 0, strict=True)
    6e-05
    """
    kind = "an integer" if integer else "a number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise ValueError(f"`{name}` must be {kind}; got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    low_ok = minimum is None or (value > minimum if strict else value >= minimum)
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if strict else '>='} {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        raise ValueError(f"`{name}` must be {kind} {' and '.join(bounds)}; got {value!r}.")
    return value


def check_positive_int(name, value):
    """An integer >= 1.

    Example:
    >>> check_positive_int("epochs", 3)
    3
    """
    return check_number(name, value, 1, integer=True)


def check_choice(name, value, choices):
    """One of `choices`.

    Example:
    >>> check_choice("head", "segformer", ("segformer", "upernet"))
    'segformer'
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value
