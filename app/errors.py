"""Errors a user can act on. The CLI prints their message (no stack trace) and exits non-zero."""


class MucodeError(RuntimeError):
    """Base class: the message names the problem and, where possible, the fix."""


class ConfigError(MucodeError):
    """A setting or a config file is invalid."""


class DataError(MucodeError):
    """A dataset file is missing or malformed."""


class NotFound(MucodeError):
    """A named thing (problem, model, experiment...) does not exist."""


class TransientError(MucodeError):
    """A service the job needs (the database, the broker) is unreachable for now: retry, do not record a failure."""


def first_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of ``text`` (an error message, a traceback), at most ``limit`` characters."""
    lines = [ln for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else ""


def clip(text: str, limit: int = 8000) -> str:
    """``text`` cut to about ``limit`` characters from the middle: its first lines (what failed) and its last
    lines (where) both stay, with a note of what was cut."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 64
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


# The errors of a service that went away (a database restart, a broker outage, a dropped connection) as opposed
# to errors of the job itself. Checked by class name along the exception's chain, so that no driver is imported
# here (psycopg, redis and kombu are optional for the embedded mode).
_TRANSIENT_NAMES = {
    "sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError", "sqlalchemy.exc.DisconnectionError",
    "sqlalchemy.exc.PendingRollbackError",
    "psycopg.OperationalError", "psycopg.InterfaceError",
    "kombu.exceptions.OperationalError", "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError",
    "amqp.exceptions.ConnectionError", "amqp.exceptions.RecoverableConnectionError",
}
# SQLite reports a busy database and a wrong query with the same class: only these messages are transient.
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "disk i/o error", "unable to open database")


def _names(exc: BaseException) -> set[str]:
    return {f"{k.__module__}.{k.__qualname__}" for k in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is an outage of the database or the broker, not a bug or bad input:
    the job should wait and run again."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TransientError):
            return True
        names = _names(cur)
        if names & _TRANSIENT_NAMES:
            if "sqlalchemy.exc.OperationalError" in names and _is_sqlite(cur):
                return any(m in str(cur).lower() for m in _SQLITE_TRANSIENT)
            return True
        if getattr(cur, "connection_invalidated", False):  # sqlalchemy.exc.DBAPIError of a dropped connection
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _is_sqlite(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return orig is not None and type(orig).__module__.startswith("sqlite3")
