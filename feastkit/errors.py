"""User-facing errors: each says what is wrong and how to fix it."""

from __future__ import annotations


class FeastkitError(Exception):
    """An error meant for a person: a one-line problem plus a one-line fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem
