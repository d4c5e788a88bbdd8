"""What the agent's store raises: a full stream, and a disk that cannot be written or read."""

from __future__ import annotations

import sqlite3

from cryptography.exceptions import InvalidTag


class StreamFullError(Exception):
    """The stream is full; new work is refused until the hub catches up."""

    def __init__(self, stream: str, reason: str) -> None:
        super().__init__(reason)
        self.stream = stream
        self.reason = reason


class AppendDeclined(Exception):
    """An append's `first` answered no: nothing of it was stored (see `appends.First`)."""


class StoreWriteError(Exception):
    """The store could not write (disk full, I/O error): nothing of the change was stored."""

    def __init__(self, error: Exception, what: str = "append") -> None:
        # SQLITE_FULL: the disk (or the page limit) is full; anything else is I/O.
        self.disk_full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        self.reason = (
            f"the store could not write ({error}): nothing of this {what} was stored; "
            "retry once the device's storage is writable again"
        )
        super().__init__(self.reason)


class StoreReadError(Exception):
    """The store could not be read (an I/O error, a damaged page or record): callers
    skip this round and look again later, as for a write error."""

    def __init__(self, error: Exception) -> None:
        self.reason = f"the store could not be read ({str(error) or type(error).__name__})"
        super().__init__(self.reason)


# What a damaged record or page raises when read: SQLite's errors, msgpack's (all
# ValueErrors), and an encrypted body whose tag does not verify.
READ_ERRORS = (sqlite3.Error, ValueError, RecursionError, InvalidTag)


class StoreKeyError(Exception):
    """The store holds sealed records that the key given cannot open (store.key lost or
    replaced, or encryption switched off without it): it is not opened, rather than
    have those records dropped as damage. The message says what the operator can do."""
