"""The ``batch:`` section: the Batch API (``/v1/files``, ``/v1/batches``) and its idle-time scheduler.

Batch items run at the lowest priority and only on capacity that interactive traffic leaves free
(see docs/design/batch.md): per model, up to ``concurrency`` items at once while the model (for a
local model: every local model, since they share the machine) has no interactive request waiting
and fewer than ``pause_at_in_flight`` interactive requests in flight; after interactive load the
batch resumes once the model has been quiet for ``resume_after_s``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]


class BatchAPIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Largest upload accepted by POST /v1/files (413 past it); OpenAI's limit is 200 MB.
    max_file_bytes: Annotated[int, Field(ge=1)] = 200 * 1024 * 1024
    max_requests: Annotated[int, Field(ge=1)] = 50_000  # lines per batch (OpenAI's limit)
    # Items of one model run at once, at most (per_model overrides by public model name).
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    per_model: dict[str, Annotated[int, Field(ge=1, le=1024)]] = Field(default_factory=dict)
    # Pause while this many interactive requests (or more) are in flight; 1: only on an idle model.
    pause_at_in_flight: Annotated[int, Field(ge=1)] = 1
    resume_after_s: Annotated[float, Field(ge=0)] = 0.5  # quiet time before a paused model resumes
    ramp_s: Annotated[float, Field(ge=0)] = 0.5  # after resuming: 1 item, doubling every ramp_s (0: no ramp)
    # Local models share one machine: interactive load on any of them pauses batch items on all.
    share_device: bool = True
    poll_interval_s: PositiveFloat = 0.25  # how often the runner looks for new, cancelled, expired batches
    retry_limit: Annotated[int, Field(ge=0, le=100)] = 5  # overload/rate-limit refusals an item waits out
    retention_s: PositiveFloat = 30 * 86_400  # files and finished batches are deleted after this
    commit_max_rows: Annotated[int, Field(ge=1, le=10_000)] = 256  # results committed in one transaction

    def concurrency_for(self, model: str) -> int:
        return self.per_model.get(model, self.concurrency)
