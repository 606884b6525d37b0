"""The autoscaling decision, pure: (policy, state, what was observed, the clock) → desired replicas
and why. One core for all three targets — one machine (``scaling/local.py``), Ray Serve (its
``autoscaling_config`` is rendered from the same policy) and Kubernetes (HPA/KEDA ``behavior`` and
triggers rendered from it) — unit-tested with an injected clock, no sleeps.

The rule, in order (the first that applies sets the floor; load can always raise it):

1. **load**: ``ceil(ongoing / target_ongoing_requests)`` replicas (``ongoing`` = requests in flight
   plus waiting, over all replicas), at least 1 while any request is ongoing or waiting;
2. **pre-warm**: inside a ``prewarm`` window (from each time its cron fires, for ``duration_s``, in
   the policy's time zone): at least the window's ``replicas``;
3. **predictive**: at least ``ceil(predicted_ongoing / target)`` where the caller passes the
   hour-of-week forecast (``analyze``'s history) for the coming hour;
4. **idle**: with ``min_replicas`` 0, no traffic for ``scale_to_zero_after_s`` and no floor above
   → 0; before that, the current replicas are kept (never below 1 while not idle long enough);
5. clamp to [``min_replicas``, ``max_replicas``].

Changes are damped like Ray Serve's: a higher target must hold for ``upscale_delay_s``, a lower one
for ``downscale_delay_s`` before it is applied — except scaling up **from zero** while requests
wait, which is immediate (a cold start must not also wait out a delay).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from modelyard.config.scaling import AutoscaleConfig


@dataclass(frozen=True)
class Observation:
    ongoing: float  # requests in flight + waiting, all replicas together
    idle_s: float  # seconds since the last request arrived (inf: never)
    predicted_ongoing: float | None = None  # the forecast for the coming hour, when ``predictive``


@dataclass(frozen=True)
class ScaleState:
    """What the decision remembers between calls (its owner keeps it, per model)."""

    replicas: int  # applied now
    pending: int | None = None  # a different target seen, not yet applied
    pending_since: float = 0.0  # monotonic seconds
    reason: str = "start"


@dataclass(frozen=True)
class Decision:
    desired: int  # what should be applied now
    target: int  # what the load/windows ask for (before the delays)
    reason: str
    state: ScaleState  # the next state (pass it to the next call)


def prewarm_floor(policy: AutoscaleConfig, wall: dt.datetime) -> tuple[int, str | None]:
    """The replicas the pre-warm windows ask for at ``wall`` (an aware datetime), and which window."""
    local = wall.astimezone(policy.zone())
    best, why = 0, None
    for p in policy.prewarm:
        fired = p.schedule().last_fire(local, p.duration_s)
        if fired is not None and (local - fired).total_seconds() < p.duration_s and p.replicas > best:
            best, why = p.replicas, f"prewarm '{p.cron}' since {fired:%H:%M} {policy.timezone}"
    return best, why


def target_replicas(policy: AutoscaleConfig, current: int, obs: Observation, wall: dt.datetime) -> tuple[int, str]:
    """Steps 1-5 of the rule: the replicas asked for now, before any delay."""
    t = policy.target_ongoing_requests
    load = math.ceil(obs.ongoing / t - 1e-9) if obs.ongoing > 0 else 0
    target, reason = load, f"load {obs.ongoing:g} ongoing / target {t:g} → {load}"
    floor, why = prewarm_floor(policy, wall)
    if floor > target:
        target, reason = floor, f"{why} → {floor}"
    if policy.predictive and obs.predicted_ongoing is not None and obs.predicted_ongoing > 0:
        pred = math.ceil(obs.predicted_ongoing / t - 1e-9)
        if pred > target:
            target, reason = pred, f"predicted {obs.predicted_ongoing:g} ongoing next hour → {pred}"
    if target == 0:
        if policy.min_replicas == 0 and policy.scale_to_zero_after_s is not None and obs.idle_s >= policy.scale_to_zero_after_s:
            reason = f"idle {obs.idle_s:.0f} s ≥ scale_to_zero_after_s {policy.scale_to_zero_after_s:g} → 0"
        elif current > 0:
            target, reason = 1, (f"idle {obs.idle_s:.0f} s < scale_to_zero_after_s → keep 1" if policy.min_replicas == 0
                                 else "no load → min_replicas")
    clamped = max(policy.min_replicas, min(policy.max_replicas, target))
    if clamped != target:
        reason += f" (clamped to {clamped}: min {policy.min_replicas}, max {policy.max_replicas})"
    return clamped, reason


def decide(policy: AutoscaleConfig, state: ScaleState, obs: Observation, *, now: float, wall: dt.datetime) -> Decision:
    """The replicas to have now. ``now``: monotonic seconds (for the delays); ``wall``: an aware
    datetime (for the pre-warm crons)."""
    target, reason = target_replicas(policy, state.replicas, obs, wall)
    cur = state.replicas
    if target == cur:
        return Decision(cur, target, reason if state.pending is None else f"{reason} (steady)",
                        ScaleState(cur, None, now, state.reason))
    if cur == 0 and target > 0 and obs.ongoing > 0:
        return Decision(target, target, f"{reason}; from zero with requests waiting: at once",
                        ScaleState(target, None, now, reason))
    delay = policy.upscale_delay_s if target > cur else policy.downscale_delay_s
    since = state.pending_since if state.pending is not None and (state.pending > cur) == (target > cur) else now
    held = now - since
    if held >= delay:
        return Decision(target, target, reason, ScaleState(target, None, now, reason))
    kind = "upscale" if target > cur else "downscale"
    return Decision(cur, target, f"{reason}; waiting {kind}_delay_s ({held:.0f} of {delay:g} s)",
                    ScaleState(cur, target, since, state.reason))
