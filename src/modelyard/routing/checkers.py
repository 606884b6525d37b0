"""Checkers of labelled answers (the cascade eval set, ``modelyard cascade calibrate``).

A checker spec is one of (plus optional keys):
- ``{"number": 42}``: the LAST number in the answer equals it (``1,234`` and ``-3.5`` read as
  numbers; equal within 1e-6 relative). The last because small models write ``7 * 8 = 56``.
- ``{"accept": ["Paris"], "case_sensitive": false}``: any variant occurs as a whole word/phrase.
- ``{"regex": "..."}``: ``re.search`` finds it.
- ``{"tests": ["assert f(1) == 2", ...], "entry": "f", "timeout_s": 5}``: the answer's code (the
  first fenced block, else the answer from its first ``def``/``import``) is run with the tests
  in a subprocess: ``python -I`` in an empty temporary directory, a minimal environment, CPU
  time, memory, file size and process limits, its own session (the whole group is killed at the
  timeout), in a new network namespace when ``unshare -rn`` works here, and always under an
  audit hook that refuses sockets, subprocesses and ``ctypes`` (so a model's code cannot reach
  the network even where namespaces are not available). It is an eval runner for model-written
  snippets, not a sandbox for hostile code.

Everything here is pure except :func:`run_tests` (the subprocess) and the one-time probe of
``unshare``; :func:`check` takes the runner as a parameter so tests can inject it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("number", "accept", "regex", "tests")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])-?\.\d+")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # short: "56 == 56", "no number", "tests failed: AssertionError", "timeout after 5s"


def spec_problem(spec: Any) -> str | None:
    """Why ``spec`` is not a checker spec (None when it is one)."""
    if not isinstance(spec, Mapping):
        return "check must be an object"
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        return f"check needs exactly one of {', '.join(KINDS)} (got {', '.join(sorted(spec)) or 'none'})"
    kind, value = kinds[0], spec[kinds[0]]
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "check.number must be a number"
    if kind == "accept" and (not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)):
        return "check.accept must be a non-empty list of strings"
    if kind == "regex":
        if not isinstance(value, str):
            return "check.regex must be a string"
        try:
            re.compile(value)
        except re.error as exc:
            return f"check.regex does not compile: {exc}"
    if kind == "tests" and (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)):
        return "check.tests must be a non-empty list of strings"
    return None


def numbers_in(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def check_number(expected: float, answer: str) -> Verdict:
    nums = numbers_in(answer)
    if not nums:
        return Verdict(False, "no number")
    got = nums[-1]
    ok = math.isclose(got, float(expected), rel_tol=1e-6, abs_tol=1e-9)
    return Verdict(ok, f"{_fmt(got)} {'==' if ok else '!='} {_fmt(float(expected))}")


def check_accept(variants: Sequence[str], answer: str, case_sensitive: bool = False) -> Verdict:
    flags = 0 if case_sensitive else re.I
    text = " ".join(answer.split())
    for v in variants:
        if re.search(r"(?<!\w)" + re.escape(" ".join(v.split())) + r"(?!\w)", text, flags):
            return Verdict(True, f"found {v!r}")
    return Verdict(False, "no accepted variant")


def check_regex(pattern: str, answer: str) -> Verdict:
    return Verdict(True, "matched") if re.search(pattern, answer) else Verdict(False, "no match")


def extract_code(answer: str) -> str | None:
    """The first fenced block (a ``python``/``py`` one preferred), else the answer from its first
    line starting with ``def``, ``import``, ``from`` or ``class``; None when there is no code."""
    blocks = _FENCE.findall(answer)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body.strip("\n")
    if blocks:
        return blocks[0][1].strip("\n")
    m = re.search(r"^(def |import |from |class )", answer, re.M)
    return answer[m.start():].strip("\n") if m else None


Runner = Callable[[str, Sequence[str], float], Verdict]


def check(spec: Mapping[str, Any], answer: str, runner: Runner | None = None) -> Verdict:
    """Judge ``answer`` by ``spec`` (see the module docstring). ``runner`` runs code tests
    (default :func:`run_tests`)."""
    problem = spec_problem(spec)
    if problem:
        raise ValueError(problem)
    if "number" in spec:
        return check_number(spec["number"], answer)
    if "accept" in spec:
        return check_accept(spec["accept"], answer, bool(spec.get("case_sensitive", False)))
    if "regex" in spec:
        return check_regex(spec["regex"], answer)
    code = extract_code(answer)
    if code is None:
        return Verdict(False, "no code")
    entry = spec.get("entry")
    if entry and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        return Verdict(False, f"no function {entry}")
    return (runner or run_tests)(code, spec["tests"], float(spec.get("timeout_s", 5.0)))


def _fmt(x: float) -> str:
    return str(int(x)) if x.is_integer() else f"{x:g}"


# --- the code runner (the only effects here) ---------------------------------------------------------

# Installed first in the child: audit hooks cannot be removed, so the code under test cannot turn
# this off from Python (ctypes, the way around it, is refused too).
_GUARD = '''\
import sys
def _guard(event, args, _deny=("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                                "os.fork", "os.forkpty", "ctypes.", "pty.", "urllib.Request", "webbrowser")):
    if event.startswith(_deny):
        raise PermissionError(f"blocked by the eval runner: {event}")
sys.addaudithook(_guard)
del _guard
'''
_MEM_BYTES = 512 << 20
_unshare: list[str] | None = None


def _net_isolation() -> list[str]:
    """``["unshare", "-rn"]`` when making a new (empty) network namespace works here, else []."""
    global _unshare  # one probe per process: a cache of a fact about the machine, not state
    if _unshare is None:
        exe = shutil.which("unshare")
        ok = False
        if exe:
            try:
                ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _unshare = [exe, "-rn"] if ok and exe else []
    return list(_unshare)


def _limits(cpu_s: int) -> None:  # pragma: no cover - runs in the child before exec
    import resource

    for res, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, _MEM_BYTES),
                       (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass


def run_tests(code: str, tests: Sequence[str], timeout_s: float = 5.0) -> Verdict:
    """Run ``code`` then ``tests`` in an isolated ``python -I`` child; pass = exit status 0."""
    with tempfile.TemporaryDirectory(prefix="modelyard-check-") as tmp:
        path = os.path.join(tmp, "answer.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_GUARD + "\n" + code + "\n\n" + "\n".join(tests) + "\n")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": tmp}
        argv = [*_net_isolation(), sys.executable, "-I", "-S", path]
        try:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    preexec_fn=lambda: _limits(max(1, math.ceil(timeout_s))))
        except OSError as exc:
            return Verdict(False, f"could not run: {exc}")
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Verdict(False, f"timeout after {timeout_s:g}s")
        if proc.returncode == 0:
            return Verdict(True, f"{len(tests)} tests passed")
        if proc.returncode < 0:
            return Verdict(False, f"killed by signal {-proc.returncode}")
        return Verdict(False, "tests failed: " + _last_error(err.decode("utf-8", "replace")))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return (lines[-1].strip() if lines else "non-zero exit")[:160]
