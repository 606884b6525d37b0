"""Operating-system helpers of the supervisor: ports, parent-death signal, the process tree, logs.

Everything here is Linux-first and reads ``/proc`` directly (no psutil dependency); where ``/proc``
is missing the helpers answer "unknown" (0 bytes, ``None``) instead of failing, and ``psutil`` is
used for the RSS if it happens to be installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --- ports ------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bind port 0, read it, close). Racy by nature: another
    process may take it before the engine binds it; the supervisor detects that and retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True if binding ``host:port`` fails with EADDRINUSE (someone else holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "taken"
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def listener_inodes(port: int) -> set[int] | None:
    """Socket inodes listening on ``port`` (any local address), from /proc/net/tcp{,6}; None if unknown."""
    found: set[int] = set()
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(int(f[9]))
    return found if seen else None


def owns_listener(port: int, pids: Iterable[int]) -> bool | None:
    """Does one of ``pids`` hold the socket listening on ``port``? None: cannot tell (no /proc,
    or the fds are not readable). Guards against a port squatter answering our health probe."""
    inodes = listener_inodes(port)
    if not inodes:
        return None if inodes is None else False
    wanted = {f"socket:[{i}]" for i in inodes}
    readable = False
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        readable = True
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
    return False if readable else None


# --- the parent-death signal ------------------------------------------------------------------


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when its parent dies.

    Why: an engine process holds gigabytes (often of GPU memory) and a port; if modelyard is
    SIGKILLed or crashes, no cleanup code runs, and an orphaned engine would hold them until someone
    notices. ``prctl(PR_SET_PDEATHSIG)`` is enforced by the kernel, so it works even then. Python has
    no binding for prctl, hence ctypes; the function is resolved *before* the fork so the child only
    makes one foreign call (no import, no dlopen: the least that can go wrong in a forked child of a
    threaded process). The race "parent died between fork and prctl" is closed by comparing the
    parent pid afterwards. Caveat (kernel semantics): the signal fires when the *thread* that forked
    the child exits, so the supervisor forks from a thread that lives exactly as long as the child.
    Returns None off Linux (no such mechanism; the process group kill on unload still applies).
    """
    if not os.path.exists("/proc/self"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    kill, getppid, getpid = os.kill, os.getppid, os.getpid

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if getppid() != parent:  # the parent is already gone: do what the signal would have done
            kill(getpid(), sig)

    return _preexec


# --- the process table ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    state: str
    rss: int  # bytes


def proc_info(pid: int) -> ProcInfo | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # comm may hold spaces and parentheses
    try:
        return ProcInfo(pid, int(rest[1]), int(rest[2]), rest[0], int(rest[21]) * _PAGE)
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, ProcInfo]:
    out: dict[int, ProcInfo] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for n in names:
        if n.isdigit() and (info := proc_info(int(n))) is not None:
            out[info.pid] = info
    return out


def tree_pids(root: int, table: dict[int, ProcInfo] | None = None) -> list[int]:
    """``root`` and all its descendants (a ppid walk over the process table), live ones only."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table and table[pid].state != "Z":
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants (shared pages counted per process, as RSS is)."""
    table = process_table()
    if table:
        return sum(table[p].rss for p in tree_pids(root, table))
    try:  # no /proc: psutil if someone installed it (never a dependency of modelyard)
        import psutil  # type: ignore[import-not-found]

        proc = psutil.Process(root)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except Exception:
        return 0


def gpu_memory(pids: Iterable[int], run: Callable[..., Any] = subprocess.run) -> int | None:
    """GPU bytes held by ``pids``, per ``nvidia-smi --query-compute-apps``; None when nvidia-smi is
    missing or fails. RSS cannot see device memory (measured on an H100: an engine holding 3.5 GiB
    on the GPU has 0.6 GiB RSS). 0 is ambiguous — e.g. a pid namespace hides the pids from
    nvidia-smi, or MPS reports its server instead of the clients — so callers treat 0 as unknown."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                  capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    want, total = set(pids), 0
    for line in out.stdout.splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 2 and f[0].isdigit() and f[1].isdigit() and int(f[0]) in want:
            total += int(f[1]) << 20  # MiB
    return total


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return [p.pid for p in process_table().values() if p.pgrp == pgid and p.state != "Z"]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie — exited, not yet reaped — counts as dead)."""
    info = proc_info(pid)
    if info is not None:
        return info.state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.exists("/proc/self")  # /proc exists but has no entry: gone


def signal_group(pgid: int, sig: int) -> bool:
    """``killpg``; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed identity (setuid): nothing more we may do
        return False
    return True


# --- logs -------------------------------------------------------------------------------------


class RotatingLog:
    """Size-rotated log of one engine: ``path``, then ``path.1`` .. ``path.<backups>`` (oldest last).

    Like ``logging.handlers.RotatingFileHandler`` but for raw bytes from a pipe; thread-safe (the
    pump thread and the supervisor's own notes write to it). Keeps the last ``tail_bytes`` written in
    memory for error messages, so a failure can quote the engine's last words without reading files.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int, tail_bytes: int = 16384) -> None:
        self.path = Path(path)
        self.max_bytes, self.backups, self.tail_bytes = max(1, max_bytes), max(0, backups), tail_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._size = self._f.tell()
        self.rotations = 0

    def write(self, data: bytes) -> None:
        with self._lock:
            self._tail += data
            if len(self._tail) > self.tail_bytes:
                del self._tail[: len(self._tail) - self.tail_bytes]
            while data and self._f is not None:
                room = self.max_bytes - self._size
                if len(data) <= room:
                    cut = len(data)
                else:  # rotate at a line boundary when one fits; split a line only if the file is empty
                    cut = data.rfind(b"\n", 0, room) + 1 or (room if self._size == 0 else 0)
                if cut:
                    self._f.write(data[:cut])
                    self._size += cut
                    data = data[cut:]
                if data:
                    self._rotate()

    def note(self, text: str) -> None:
        """A line from the supervisor itself, marked as such."""
        self.write(f"[modelyard] {text}\n".encode())

    def tail(self, max_lines: int = 30) -> str:
        """The last ``max_lines`` non-blank lines; a run of identical lines (health-probe access
        logs, typically) is folded into one line with a count, so it cannot hide the cause."""
        with self._lock:
            text = self._tail.decode("utf-8", "replace")
        folded: list[list[object]] = []
        for ln in text.splitlines():
            if not ln.strip():
                continue
            if folded and folded[-1][0] == ln:
                folded[-1][1] += 1  # type: ignore[operator]
            else:
                folded.append([ln, 1])
        return "\n".join(f"{ln} [x{n}]" if n != 1 else str(ln) for ln, n in folded[-max_lines:])

    def _rotate(self) -> None:
        assert self._f is not None
        self._f.close()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._f = open(self.path, "wb", buffering=0)  # noqa: SIM115
        self._size = 0
        self.rotations += 1

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def pump(fd: int, log: RotatingLog) -> threading.Thread:
    """Copy everything read from ``fd`` (an engine's stdout+stderr pipe) into ``log`` until EOF,
    on a daemon thread; the fd is closed at EOF. A pipe must be drained: an engine blocked on a full
    pipe would look hung."""

    def run() -> None:
        try:
            while chunk := os.read(fd, 65536):
                log.write(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    t = threading.Thread(target=run, name=f"engine-log:{log.path.name}", daemon=True)
    t.start()
    return t
