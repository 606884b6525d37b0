"""The soak's short version in CI (``bench/soak.py``, 5,000 requests, 400 of them to real models
swapping under a tight budget; the 100k run stays out of CI): nothing lost, one spend row per
request, open fds flat, the models really swapped, and no gross leak. The 5 % RSS bound is the
long run's: 5k requests are the allocator's warm-up (see docs/design/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .support import REPO


def test_short_soak(tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--requests", "5000", "--real", "400", "--real-block", "25",
         "--max-rss-growth", "0.5", "--out", str(out), "--tag", "ci"],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "ci.json").read_text())
    assert summary["lost"] == 0 and summary["spend_rows"] == summary["requests"] == 5000
    assert summary["by_kind"]["stream"] > 0 and all(summary["by_kind"][m] == 100 for m in
                                                    ("text-embedding", "intent", "moderation", "chat"))
    assert summary["tier_moves"] >= 4 and all(summary["verdicts"].values()), summary["verdicts"]
    assert (out / "ci.png").stat().st_size > 10_000  # the plot was drawn
