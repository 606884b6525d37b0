"""The request's outcome as a value: what answered, through which hops, at what price and usage.

The proxy builds one ``Tally`` per request while it carries the request (so a cancelled or failed
request still has what it spent) and ends it into a frozen ``Outcome``; the recorder
(``accounting.recorder``) turns outcomes into the budget charge, spend rows and the access log.
Nothing else reads or writes a request's bookkeeping.

These types live in ``accounting`` (not ``routing``, as the first design sketched) because the
recorder consumes them and imports may only point down the layers (routing → accounting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelyard.config.schema import Price


@dataclass(frozen=True, slots=True)
class Hop:
    """One model asked on the request's behalf: a cascade tier, or the one model that answered."""

    model: str  # the model group that answered this hop (after fallbacks)
    deployment: str | None  # the deployment's one identity (ModelConfig.key); None: no deployment was reached
    price: Price | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    fallbacks: int = 0  # fallback hops inside this hop (model group → its fallbacks)
    retries: int = 0
    note: str | None = None  # e.g. a cascade tier's decision: "conf=-0.42 escalate"


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str  # the public model the client asked for (the group name: "chat", "auto", "cascade")
    status: int
    stream: bool = False
    hops: tuple[Hop, ...] = ()
    route: str | None = None  # auto's decision, as sent in x-modelyard-route

    @property
    def answered(self) -> Hop | None:
        return self.hops[-1] if self.hops else None

    @property
    def deployment(self) -> str | None:
        return self.hops[-1].deployment if self.hops else None

    @property
    def prompt_tokens(self) -> int:
        return sum(h.prompt_tokens for h in self.hops)

    @property
    def completion_tokens(self) -> int:
        return sum(h.completion_tokens for h in self.hops)

    @property
    def fallbacks(self) -> int:
        return sum(h.fallbacks for h in self.hops)


@dataclass(eq=False, slots=True)
class Tally:
    """The outcome under construction, owned by the task that carries the request."""

    model: str
    stream: bool = False
    hops: list[Hop] = field(default_factory=list)
    route: str | None = None

    def add(self, hop: Hop) -> None:
        self.hops.append(hop)

    def end(self, status: int) -> Outcome:
        hops = tuple(self.hops)
        if hops and status != hops[-1].status:  # the client saw another status (stream cut, 499)
            last = hops[-1]
            hops = hops[:-1] + (Hop(last.model, last.deployment, last.price, last.prompt_tokens,
                                    last.completion_tokens, status, last.fallbacks, last.retries, last.note),)
        return Outcome(self.model, status, self.stream, hops, self.route)

    @property
    def tokens(self) -> int:
        """Tokens used so far (every hop): what a rate-limit charge is settled with."""
        return sum(h.prompt_tokens + h.completion_tokens for h in self.hops)
