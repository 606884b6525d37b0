"""``responses:`` — the Responses API's stored responses and background runs (issue 14 §1)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt


class ResponsesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # How long a stored response (and what previous_response_id continues from) is kept.
    retention_days: PositiveFloat = 30.0
    purge_interval_s: PositiveFloat = 3600.0  # how often expired responses are deleted
    max_background: PositiveInt = 16  # background responses running at once (the rest wait, queued)
    max_chain_bytes: PositiveInt = 4 * 1024 * 1024  # a conversation's stored context past this: 400
