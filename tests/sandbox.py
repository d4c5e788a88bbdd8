"""Run a Python module under the system-call rules of the shipped units, without systemd:
`python -m tests.sandbox MODULE ARGS...`.

The tests run where no systemd manages services, so they cannot start the units. What
of the units' hardening could break the daemons' own dependencies (LiteRT's XNNPACK,
numpy's OpenBLAS, SQLite, psutil, aiohttp) is the syscall filter and W^X memory; this
applies both to the process before it imports anything, as systemd would:

- `SystemCallFilter=@system-service` minus `@privileged @resources`, with
  `SystemCallErrorNumber=EPERM`: a seccomp allow-list of exactly the calls systemd's own
  `systemd-analyze syscall-filter` names (numbers from the kernel headers), every other
  call failing with EPERM;
- `MemoryDenyWriteExecute=yes`: the kernel's PR_SET_MDWE (Linux 6.3), which refuses
  what systemd's seccomp rule refuses (a mapping both writable and executable, or one
  becoming executable);
- `NoNewPrivileges=yes`.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
import runpy
import shutil
import struct
import subprocess
import sys
from pathlib import Path

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_MDWE = 38, 22, 65
SECCOMP_MODE_FILTER, MDWE_REFUSE_EXEC_GAIN = 2, 1
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EPERM = 0x7FFF0000, 0x00050000, 1


def unavailable() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if platform.machine() != "x86_64" or not UNISTD.exists():
        return f"needs x86_64 and its syscall table ({UNISTD}, package linux-libc-dev)"
    if shutil.which("systemd-analyze") is None:
        return "needs systemd-analyze for the syscall groups"
    if tuple(int(p) for p in re.findall(r"\d+", platform.release())[:2]) < (6, 3):
        return "needs Linux 6.3 or later for PR_SET_MDWE"
    return None


@functools.cache
def group(name: str) -> frozenset[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= group(entry) if entry.startswith("@") else {entry}
    return frozenset(calls)


def allowed() -> frozenset[str]:
    """What the units allow: @system-service without @privileged and @resources."""
    return group("@system-service") - group("@privileged") - group("@resources")


def _filter(numbers: list[int]) -> bytes:
    """A seccomp program: other architectures and every call not listed get EPERM."""
    deny = SECCOMP_RET_ERRNO | EPERM
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, deny),
    ]
    program.append((BPF_LD_W_ABS, 0, 0, 0))
    for number in numbers:  # two instructions each: jump offsets are only 8 bits
        program += [(BPF_JEQ_K, 0, 1, number), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    program.append((BPF_RET_K, 0, 0, deny))
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def enter() -> None:
    """Confine this process (and what it starts) as the units do."""
    table = dict(re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()))
    numbers = sorted(int(table[name]) for name in allowed() if name in table)
    code = _filter(numbers)
    libc = ctypes.CDLL(None, use_errno=True)
    program = _Program(len(code) // 8, code)
    for option, args in (
        (PR_SET_NO_NEW_PRIVS, (1, 0, 0, 0)),
        (PR_SET_MDWE, (MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)),
        (PR_SET_SECCOMP, (SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0)),
    ):
        # prctl is variadic: pass each argument as a full-width unsigned long.
        if libc.prctl(option, *(ctypes.c_ulong(a) for a in args)) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


if __name__ == "__main__":
    why = unavailable()
    if why:
        sys.exit(f"tests.sandbox: {why}")
    enter()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
