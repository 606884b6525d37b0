"""Per-model autoscaling settings (issue 13): one policy, three targets (one machine, Ray Serve,
Kubernetes). The decision itself is ``scaling/policy.py``; this is only its typed config.

    models:
      - name: coder
        autoscale:
          min_replicas: 0
          max_replicas: 3
          target_ongoing_requests: 2      # alias: target_num_ongoing_requests_per_replica (Ray's old name)
          upscale_delay_s: 0
          downscale_delay_s: 300
          scale_to_zero_after_s: 900
          timezone: Europe/Berlin         # of the prewarm crons (default UTC)
          prewarm: ["30 8 * * 1-5"]       # or {cron: "30 8 * * 1-5", duration_s: 36000, replicas: 2}
          predictive: true                # pre-warm from the hour-of-week history too
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.config.cron import Cron, CronError

RAY_ALIAS = "target_num_ongoing_requests_per_replica"


class Prewarm(BaseModel):
    """From each time ``cron`` fires, for ``duration_s``: at least ``replicas`` replicas, loaded and warm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    duration_s: Annotated[float, Field(gt=0)] = 3600.0
    replicas: Annotated[int, Field(ge=1)] = 1

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            Cron.parse(v)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return v

    def schedule(self) -> Cron:
        return Cron.parse(self.cron)


class AutoscaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 1
    target_ongoing_requests: Annotated[float, Field(gt=0)] = Field(
        default=2.0, validation_alias=AliasChoices("target_ongoing_requests", RAY_ALIAS))
    upscale_delay_s: Annotated[float, Field(ge=0)] = 0.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 300.0
    scale_to_zero_after_s: Annotated[float, Field(ge=0)] | None = None  # None: never to zero (unless min is 0: 900)
    max_ongoing_requests: Annotated[int, Field(ge=1)] | None = None  # per replica (Ray's cap); None: 2 × target
    timezone: str = "UTC"
    prewarm: list[Prewarm] = Field(default_factory=list)
    predictive: bool = False

    @field_validator("prewarm", mode="before")
    @classmethod
    def _bare_crons(cls, v: object) -> object:
        if isinstance(v, list):
            return [{"cron": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.min_replicas == 0 and self.scale_to_zero_after_s is None:
            object.__setattr__(self, "scale_to_zero_after_s", 900.0)
        for i, p in enumerate(self.prewarm):
            if p.replicas > self.max_replicas:
                raise ValueError(f"prewarm[{i}].replicas ({p.replicas}) is above max_replicas ({self.max_replicas})")
        return self

    @property
    def ongoing_cap(self) -> int:
        """Requests one replica takes at once (Ray's ``max_ongoing_requests``)."""
        return self.max_ongoing_requests or max(1, int(round(2 * self.target_ongoing_requests)))

    def zone(self) -> dt.tzinfo:
        return ZoneInfo(self.timezone)
