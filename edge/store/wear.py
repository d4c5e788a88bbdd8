"""Count the bytes the store writes, for the flash write budget.

The writer thread is the only thread that writes the database, so the growth of its own
`wchar` in /proc/thread-self/io is what SQLite wrote (WAL frames and checkpoints
included). Where that file does not exist, the logical size of the records is counted.
"""

from __future__ import annotations

from pathlib import Path

_IO = Path("/proc/thread-self/io")


def thread_bytes_written() -> int | None:
    """Bytes this thread has passed to write calls so far, or None if unknown here."""
    try:
        for line in _IO.read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
