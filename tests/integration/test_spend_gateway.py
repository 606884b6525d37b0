"""One spend row per request, end to end: the real gateway writing to a real SQLite store.

Requests of every kind (unary, streamed, an upstream error, a fallback) go through the gateway;
`/spend/report` and `/spend/logs` read them back; after SIGTERM every accepted row is in the
database (rows == requests), with costs from the configured prices.
"""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal

import openai
import pytest

from modelyard.accounting.store import SpendStore

from .support import MockUpstream, ProcessPool, deployment, model_cfg, wait_until


def test_every_request_leaves_one_spend_row(procs: ProcessPool, shared_mock: MockUpstream, tmp_path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    config = {
        "memory": {"data_dir": str(home)},
        "spend": {"flush_interval_s": 0.2},
        "router": {"retry": {"num_retries": 0}},
        "models": [
            model_cfg("priced", deployment(shared_mock, "up-priced"), price={"input_per_1k": 1.0, "output_per_1k": 2.0}),
            model_cfg("free", deployment(shared_mock, "up-free")),
            model_cfg("bad", deployment(procs.mock(behavior="error:400"), "up-bad")),
        ],
    }
    gw = procs.gateway(config)
    c = gw.client()
    r1 = c.chat.completions.create(model="priced", messages=[{"role": "user", "content": "one two three"}])
    stream = c.chat.completions.create(model="free", messages=[{"role": "user", "content": "a b"}], stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="bad", messages=[{"role": "user", "content": "bad"}])
    raw = c.chat.completions.with_raw_response.create(
        model="priced", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-modelyard-model"] == "priced"
    expected = 4

    report = wait_until(
        lambda: (lambda d: d if sum(g["requests"] for g in d) == expected else None)(
            gw.http.get("/spend/report", params={"group_by": "model"}).json()["data"]
        ),
        10, "the spend rows to be flushed",
    )
    by_model = {g["group"]["model"]: g for g in report}
    assert by_model["priced"]["requests"] == 2 and by_model["priced"]["unpriced"] == 0
    assert by_model["free"]["requests"] == 1 and by_model["free"]["unpriced"] == 1 and by_model["free"]["errors"] == 0
    assert by_model["bad"]["requests"] == 1 and by_model["bad"]["errors"] == 1 and by_model["bad"]["error_rate"] == 1.0
    u = r1.usage
    first_cost = Decimal(u.prompt_tokens) * Decimal("0.001") + Decimal(u.completion_tokens) * Decimal("0.002")
    assert Decimal(by_model["priced"]["cost"]) >= first_cost > 0
    logs = gw.http.get("/spend/logs", params={"model": "priced", "limit": 1}).json()
    assert len(logs["data"]) == 1 and logs["next_cursor"]
    page2 = gw.http.get("/spend/logs", params={"model": "priced", "limit": 1, "cursor": logs["next_cursor"]}).json()
    assert len(page2["data"]) == 1 and logs["data"][0]["request_id"] != page2["data"][0]["request_id"]
    assert page2["next_cursor"] is None
    free = gw.http.get("/spend/logs", params={"model": "free"}).json()["data"]
    assert [row["stream"] for row in free] == [True] and free[0]["completion_tokens"] > 0

    # more traffic, then a graceful stop: nothing accepted may be lost
    for i in range(20):
        c.chat.completions.create(model="free", messages=[{"role": "user", "content": f"n{i}"}])
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0, gw.describe()

    async def count() -> int:
        store = SpendStore(f"sqlite+aiosqlite:///{home / 'modelyard.db'}")
        await store.start()
        try:
            return await store.count()
        finally:
            await store.aclose()

    assert asyncio.run(count()) == expected + 20
