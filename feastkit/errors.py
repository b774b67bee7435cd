"""User-facing errors: each says what is wrong and how to fix it, on one line."""

from __future__ import annotations

import sys


class _ProblemAndFix:
    """A one-line problem plus a one-line fix, as the exception's message."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class FeastkitError(_ProblemAndFix, Exception):
    """An error meant for a person: a one-line problem plus a one-line fix."""


class ServiceUnavailable(_ProblemAndFix, ConnectionError):
    """A service feastkit needs (online store, registry database, API) does not answer.

    Not a FeastkitError on purpose: the input is fine and a retry may succeed, so a scheduler
    retries it (`feastkit.jobs.fail_fast` fails only FeastkitErrors at once). It still carries
    the problem and the fix, so the command line prints it as one line.
    """


def one_line(text: str, limit: int = 400) -> str:
    """`text` on a single line (lines joined by ' | ', runs of spaces collapsed), at most `limit` chars."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    flat = " | ".join(p for p in parts if p)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is(exc: BaseException, module: str, *names: str) -> bool:
    """Whether `exc` is one of `module`'s exception classes, without importing the module: an
    exception of a library that was never imported cannot have been raised."""
    mod = sys.modules.get(module)
    classes = tuple(c for c in (getattr(mod, n, None) for n in names) if isinstance(c, type))
    return bool(classes) and isinstance(exc, classes)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 20:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def explain(exc: BaseException) -> tuple[str, str | None] | None:
    """(problem, fix) for failures a person can act on: feastkit's own errors, services that do not
    answer, unreadable input files, invalid settings. None for anything else (a bug).

    Looks through the exception's causes, so a library error wrapped by Feast is still recognised.
    """
    chain = _chain(exc)
    for e in chain:  # a service that does not answer, even when wrapped in another error
        if isinstance(e, ServiceUnavailable):
            return e.problem, e.fix
    for e in chain:
        if _is_connectivity(e):
            return _explain_one(e)
    for e in chain:
        if isinstance(e, FeastkitError):
            return e.problem, e.fix
    for e in chain:
        found = _explain_one(e)
        if found is not None:
            return found
    return None


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says a service does not answer."""
    return any(isinstance(e, ServiceUnavailable) or _is_connectivity(e) for e in _chain(exc))


def _is_connectivity(e: BaseException) -> bool:
    return (_is(e, "redis.exceptions", "ConnectionError", "TimeoutError")
            or _is(e, "sqlalchemy.exc", "OperationalError", "InterfaceError")
            or _is(e, "psycopg", "OperationalError")
            or _is(e, "httpx", "ConnectError", "TimeoutException")
            or isinstance(e, ConnectionRefusedError))


def _explain_one(e: BaseException) -> tuple[str, str | None] | None:
    text = _first_line(e)
    if _is(e, "redis.exceptions", "ConnectionError", "TimeoutError"):
        return (f"the Redis online store does not answer ({text})",
                "start Redis, or set FEASTKIT_REDIS_CONNECTION_STRING to where it runs")
    if _is(e, "sqlalchemy.exc", "OperationalError", "InterfaceError") or _is(e, "psycopg", "OperationalError"):
        return (f"the PostgreSQL database does not answer ({_postgres_reason(e)})",
                "start PostgreSQL, or set FEASTKIT_REGISTRY_URL to where it runs")
    if _is(e, "sqlite3", "OperationalError", "DatabaseError"):
        return (f"a sqlite database failed ({text})",
                "wait for the process holding it, or check the file it names (rebuild it with "
                "`feastkit apply` and `feastkit materialize`)")
    if _is(e, "httpx", "ConnectError", "TimeoutException", "RemoteProtocolError"):
        return f"the prediction API does not answer ({text})", "start it with `feastkit serve`, or pass --url"
    if _is(e, "duckdb", "IOException", "InvalidInputException", "ConversionException"):
        return f"an input file cannot be read ({text})", "fix or restore the file it names, then run again"
    if _is(e, "pyarrow.lib", "ArrowInvalid", "ArrowTypeError") and "parquet" in text.lower():
        return f"an input file cannot be read ({text})", "fix or restore the file it names, then run again"
    if _is(e, "pydantic_core", "ValidationError") and "Settings" in str(e):
        return f"a FEASTKIT_* setting is invalid ({_settings_reason(e)})", "fix the environment variable it names"
    if _is(e, "feast.errors", "FeastObjectNotFoundException", "FeatureViewNotFoundException",
           "FeatureServiceNotFoundException", "EntityNotFoundException", "DataSourceNotFoundException"):
        return text, "check the name against `feast feature-views list` (or `feastkit apply` first)"
    if isinstance(e, ConnectionRefusedError):
        return f"a service does not answer ({text})", "start it, or fix the host and port in the settings"
    return None


def _postgres_reason(e: BaseException) -> str:
    """The driver's reason without SQL, parameters or the background link SQLAlchemy appends."""
    orig = getattr(e, "orig", None) or e
    lines = [line.strip() for line in str(orig).splitlines() if line.strip() and "sqlalche.me" not in line]
    return lines[0] if lines else type(orig).__name__


def _settings_reason(e: BaseException) -> str:
    errors = getattr(e, "errors", None)
    try:
        first = errors()[0] if callable(errors) else None
    except Exception:  # noqa: BLE001 (fall back to the text)
        first = None
    if not first:
        return _first_line(e)
    field = ".".join(str(p) for p in first.get("loc", ()))
    return f"FEASTKIT_{field.upper()}={first.get('input')!r}: {first.get('msg')}"
