"""The `[budgets]` section of the config (contract §10): who may spend how much, per rolling window.

Declared here, beside the code that enforces it, and composed into `proxy.config.Settings`.
Limits are whole tokens (or USD) per rolling window; 0 means "no limit of this kind", because
TOML has no null and `config.example.toml` must show every field with its default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KEY_ID = re.compile(r"^sha256:[0-9a-f]{16}$")
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
OTHER = "other"
"""The alias of every key without an entry of its own (metric label, report name)."""
MIN_COMPLETION_TOKENS = 256
"""The API's minimum for max_prompt_tokens and max_completion_tokens (protocol.md §2.1): clamp never
goes below it."""

# Limit name → (window seconds, unit). The names are the config fields and the report's `budget`.
WINDOWS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400, "30d": 30 * 86400}
LIMITS: dict[str, tuple[str, Literal["tokens", "usd"]]] = {
    "tokens_per_minute": ("minute", "tokens"),
    "tokens_per_hour": ("hour", "tokens"),
    "tokens_per_day": ("day", "tokens"),
    "tokens_per_30d": ("30d", "tokens"),
    "usd_per_day": ("day", "usd"),
    "usd_per_30d": ("30d", "usd"),
}
LONGEST_WINDOW_S = max(WINDOWS.values())


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BudgetLimits(_Section):
    """The limits and guardrails of one budget; a request must fit every limit that is set."""

    tokens_per_minute: int = Field(0, ge=0, description="Tokens per rolling 60 s; 0: no limit.")
    tokens_per_hour: int = Field(0, ge=0, description="Tokens per rolling hour; 0: no limit.")
    tokens_per_day: int = Field(0, ge=0, description="Tokens per rolling 24 h; 0: no limit.")
    tokens_per_30d: int = Field(0, ge=0, description="Tokens per rolling 30 days; 0: no limit.")
    usd_per_day: float = Field(0.0, ge=0, description="USD per rolling 24 h, at the [prices] table; 0: no limit.")
    usd_per_30d: float = Field(0.0, ge=0, description="USD per rolling 30 days, at the [prices] table; 0: no limit.")
    clamp: bool = Field(
        False, description="When a run's reservation does not fit, lower (or set) max_completion_tokens in the "
        "request body to what the budget can still pay, if that is at least 256; a request that sets neither "
        "max_*_tokens gets both (a quarter of what is left to completions, at least 256 each). The only body "
        "change runtap makes.",
    )
    cancel_on_exhaustion: bool = Field(
        False, description="Cancel a run upstream (POST .../cancel with the caller's own credentials, held in "
        "memory for that exchange only) when its running usage pushes the budget past a limit.",
    )

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {name: value for name in LIMITS if (value := getattr(self, name))}

    @property
    def token_limited(self) -> bool:
        return any(LIMITS[name][1] == "tokens" for name in self.limits())


class KeyBudget(BudgetLimits):
    key_id: str = Field(description="The key's fingerprint, sha256:<16 hex> (from `runtap key-id`).")
    alias: str = Field(description="Name in metrics and reports (the key_id never is a label).")

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, value: str) -> str:
        if not KEY_ID.match(value):
            raise ValueError(f"key_id must look like sha256:0123456789abcdef (runtap key-id), got {value!r}")
        return value

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not ALIAS.match(value) or value == OTHER:
            raise ValueError(f"alias must be 1-64 of A-Z a-z 0-9 _ . : - and not {OTHER!r}, got {value!r}")
        return value


class BudgetsSettings(_Section):
    unknown_keys: Literal["allow", "deny", "default"] = Field(
        "allow", description="Keys with no [[budgets.keys]] entry: allow (no limit), deny (429), or default "
        "(each such key gets its own [budgets.default] budget).",
    )
    default_reservation_tokens: int = Field(
        4096, ge=1, le=10_000_000, description="Reserved for a run whose request sets neither max_prompt_tokens "
        "nor max_completion_tokens (added to the one it sets, if only one); for a Responses create or a Chat "
        "completion, whose input nothing bounds, added to its output bound.",
    )
    settle_unseen_after_s: float = Field(
        3600.0, gt=0, le=30 * 86400, description="A reservation whose run is never seen to end is settled at its "
        "reserved amount at the run's expires_at, or this long after admission when no expires_at is known.",
    )
    default: BudgetLimits = Field(BudgetLimits(), description="The budget of keys without an entry.")
    keys: list[KeyBudget] = Field(default_factory=list, description="One entry per budgeted key.")

    @model_validator(mode="after")
    def _unique(self) -> BudgetsSettings:
        for what in ("key_id", "alias"):
            values = [getattr(k, what) for k in self.keys]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"budgets.keys: {what} {', '.join(dupes)} appears more than once")
        return self
