"""Errors of the pure core. Bad input always names the field it is about."""

from __future__ import annotations


class SpecError(ValueError):
    """An object's spec is not valid: ``field`` is a dotted path such as ``spec.gpus``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# Beyond this a number is shown in scientific notation: nobody reads 309 digits.
_LONGEST_PLAIN_NUMBER = 10**12


def show_number(value: float | int | None) -> str:
    """A number for a message: as written when short, abbreviated when huge (``1e+308``)."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        if abs(value) < _LONGEST_PLAIN_NUMBER:
            return str(value)
        try:
            return f"{float(value):.6g}"
        except OverflowError:  # beyond a float: its order of magnitude, from the bit length
            return f"about {'-' if value < 0 else ''}1e+{int(value.bit_length() * 0.30103)}"
    if value.is_integer() and abs(value) < _LONGEST_PLAIN_NUMBER:
        return str(int(value))
    return f"{value:.6g}"
