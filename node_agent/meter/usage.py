"""What the proxy decides, with no I/O: what a call may cost, whether the budget admits
it, and what it cost once its reply (or its stream) has said.

Before a call: its prompt is estimated at one token per 3 bytes of the request body, its
reply at the output limit the request names (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``). The proxy lowers that limit to what the budget has left (it adds
one when the request names none), so no reply can pass the budget; a call the budget
cannot pay even a few output tokens for is refused. While calls are in flight their
estimates are reserved, so parallel calls cannot pass it together either.

After a call: the usage the reply reports (OpenAI's ``prompt_tokens`` / ``completion_tokens``,
Anthropic's and the Responses API's ``input_tokens`` / ``output_tokens``, cached tokens at
their own price), in a JSON body or the events of a stream. A reply that says nothing of
its usage costs its estimate. A model the price map does not know costs 0: its tokens are
counted, and the figures say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node_agent.meter.prices import Price

__all__ = ["Ledger", "MIN_OUTPUT_TOKENS", "Plan", "Usage", "cost", "merge", "plan", "usage_of"]

MIN_OUTPUT_TOKENS = 16  # a call the budget cannot pay this many output tokens for is refused
_BYTES_PER_TOKEN = 3
_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# The limit a request without one gets, by API: chat and completions, Responses.
_ADDED_LIMIT = {"openai": "max_tokens", "responses": "max_output_tokens", "anthropic": "max_tokens"}


@dataclass(frozen=True)
class Usage:
    """One call's tokens: ``fresh`` input at the input price, cache reads and writes at
    theirs, output at the output price."""

    fresh: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0

    @property
    def tokens_in(self) -> int:
        return self.fresh + self.cache_read + self.cache_write


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def usage_of(obj: object, anthropic: bool) -> Usage | None:
    """The usage a reply body or one stream event reports, or None. ``anthropic``: its
    input tokens leave the cached ones out (OpenAI's include them)."""
    if not isinstance(obj, Mapping):
        return None
    found: object = obj.get("usage")
    for outer in ("message", "response"):  # Anthropic's message_start, Responses' response.completed
        inner = obj.get(outer)
        if not isinstance(found, Mapping) and isinstance(inner, Mapping):
            found = inner.get("usage")
    if not isinstance(found, Mapping):
        return None
    u: Mapping[str, Any] = found
    given = _int(u.get("prompt_tokens")) or _int(u.get("input_tokens"))
    output = _int(u.get("completion_tokens")) or _int(u.get("output_tokens"))
    if anthropic:
        return Usage(
            given, _int(u.get("cache_read_input_tokens")), _int(u.get("cache_creation_input_tokens")), output
        )
    details = u.get("prompt_tokens_details") or u.get("input_tokens_details")
    cached = min(_int(details.get("cached_tokens")), given) if isinstance(details, Mapping) else 0
    return Usage(given - cached, cached, 0, output)


def merge(a: Usage | None, b: Usage | None) -> Usage | None:
    """Two reports of one call's usage (a stream's events): the larger of each count, as
    Anthropic's message_delta repeats what message_start said, cumulatively."""
    if a is None or b is None:
        return a or b
    return Usage(
        max(a.fresh, b.fresh),
        max(a.cache_read, b.cache_read),
        max(a.cache_write, b.cache_write),
        max(a.output, b.output),
    )


def cost(usage: Usage, price: Price | None) -> float:
    if price is None:
        return 0.0
    return (
        usage.fresh * price.input
        + usage.cache_read * (price.cache_read or price.input)
        + usage.cache_write * (price.cache_write or price.input)
        + usage.output * price.output
    )


@dataclass(frozen=True)
class Plan:
    """What to do with one call: refuse it (``refusal``: the line the client is told), or
    pass it on with ``body`` (its output limit lowered or added) and ``estimate`` reserved."""

    refusal: str = ""
    body: Mapping[str, Any] = field(default_factory=dict)
    estimate: float = 0.0


@dataclass
class Ledger:
    """A job's spending: settled, and reserved by the calls in flight."""

    budget_usd: float
    spent: float = 0.0
    reserved: float = 0.0
    calls: int = 0
    refused: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    unpriced: set[str] = field(default_factory=set)
    refusal: str = ""  # the last refusal's line

    @property
    def left(self) -> float:
        return self.budget_usd - self.spent - self.reserved

    def refuse(self, line: str) -> None:
        self.refused += 1
        self.refusal = line

    def settle(self, estimate: float, usage: Usage | None, price: Price | None, model: str) -> None:
        """A call passed on has ended: its reservation goes, what it cost is spent."""
        self.reserved = max(0.0, self.reserved - estimate)
        self.calls += 1
        if price is None:
            self.unpriced.add(model or "(no model named)")
        if usage is None:  # nothing said: the estimate is what it may have cost
            self.spent += estimate
            return
        self.tokens_in += usage.tokens_in
        self.tokens_out += usage.output
        self.spent += cost(usage, price)


def plan(ledger: Ledger, body: Mapping[str, Any], size: int, price: Price | None, api: str) -> Plan:
    """Admit a call of ``api`` (openai | responses | anthropic) whose JSON body is ``body``
    (``size`` bytes), or refuse it; an admitted call's estimate is reserved."""
    if price is None or ledger.budget_usd <= 0:
        return Plan(body=body)
    prompt = math.ceil(size / _BYTES_PER_TOKEN) * price.input
    left = ledger.left - prompt
    affordable = math.floor(left / price.output) if price.output > 0 else 1 << 30
    if left < 0 or affordable < MIN_OUTPUT_TOKENS:
        line = (
            f"flota: budget ${ledger.budget_usd:g} reached: ${ledger.spent:.6f} spent (metered by the node), "
            f"${max(ledger.left, 0):.6f} left; this call could cost more, so it is refused"
        )
        ledger.refuse(line)
        return Plan(refusal=line)
    asked = next((_int(body[k]) for k in _LIMITS if _int(body.get(k))), 0)
    limit = min(asked or price.max_output or affordable, affordable)
    new = dict(body)
    if limit != asked:
        key = next((k for k in _LIMITS if _int(body.get(k))), _ADDED_LIMIT.get(api, "max_tokens"))
        new[key] = limit
    estimate = prompt + limit * price.output
    ledger.reserved += estimate
    return Plan(body=new, estimate=estimate)
