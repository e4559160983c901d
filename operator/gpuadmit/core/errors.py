"""Errors of the pure core. Bad input always names the field it is about."""

from __future__ import annotations


class SpecError(ValueError):
    """An object's spec is not valid: ``field`` is a dotted path such as ``spec.gpus``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
