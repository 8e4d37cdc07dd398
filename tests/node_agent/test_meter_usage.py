"""node_agent/meter/usage.py and prices.py, pure: usage read from every reply shape, what
a call may cost before it is made, and the ledger that admits or refuses it."""

from __future__ import annotations

import pytest

from node_agent.meter import prices
from node_agent.meter.usage import MIN_OUTPUT_TOKENS, Ledger, Usage, cost, merge, plan, usage_of

MINI = prices.Price(input=0.15e-6, output=0.6e-6, cache_read=0.075e-6, cache_write=0.0, max_output=16384)


def test_litellms_own_map_is_read_without_litellm() -> None:
    table = prices.load()
    assert prices.lookup(table, "gpt-4o-mini") == prices.lookup(table, "openai/gpt-4o-mini")
    mini = prices.lookup(table, "openai/gpt-4o-mini")
    assert mini is not None and mini.input == pytest.approx(0.15e-6) and mini.max_output == 16384
    assert prices.lookup(table, "smollm2-local") is None


@pytest.mark.parametrize(
    ("body", "anthropic", "usage"),
    [
        ({"usage": {"prompt_tokens": 100, "completion_tokens": 7}}, False, Usage(100, 0, 0, 7)),
        (  # OpenAI's cached tokens are part of its prompt tokens
            {
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 7,
                    "prompt_tokens_details": {"cached_tokens": 60},
                }
            },
            False,
            Usage(40, 60, 0, 7),
        ),
        (  # the Responses API, streamed: response.completed
            {"type": "response.completed", "response": {"usage": {"input_tokens": 9, "output_tokens": 3}}},
            False,
            Usage(9, 0, 0, 3),
        ),
        (  # Anthropic's message_start: its input tokens leave the cache out
            {
                "message": {
                    "usage": {
                        "input_tokens": 5,
                        "cache_read_input_tokens": 50,
                        "cache_creation_input_tokens": 8,
                    }
                }
            },
            True,
            Usage(5, 50, 8, 0),
        ),
        ({"choices": [{"delta": {"content": "hi"}}]}, False, None),
        ([1, 2], False, None),
    ],
)
def test_usage_of_every_shape(body: object, anthropic: bool, usage: Usage | None) -> None:
    assert usage_of(body, anthropic) == usage


def test_a_streams_reports_merge_to_the_largest_counts() -> None:
    start = Usage(fresh=30, cache_read=5, output=1)
    assert merge(merge(None, start), Usage(output=80)) == Usage(30, 5, 0, 80)
    assert cost(Usage(40, 60, 0, 7), MINI) == pytest.approx(40 * 0.15e-6 + 60 * 0.075e-6 + 7 * 0.6e-6)
    assert cost(Usage(40, 60, 0, 7), None) == 0.0


def test_a_call_gets_the_output_limit_the_budget_leaves_and_is_refused_below_a_few_tokens() -> None:
    ledger = Ledger(budget_usd=0.001)
    body = {"model": "gpt-4o-mini", "max_tokens": 100000}
    first = plan(ledger, body, 300, MINI, "openai")
    assert not first.refusal and first.body["max_tokens"] == int((0.001 - 100 * 0.15e-6) / 0.6e-6)
    assert ledger.reserved == pytest.approx(first.estimate) and first.estimate <= 0.001
    # In flight, its estimate is reserved: a parallel call cannot pass the budget with it.
    second = plan(ledger, body, 300, MINI, "openai")
    assert second.refusal.startswith("flota: budget $0.001 reached") and ledger.refused == 1
    ledger.settle(first.estimate, Usage(100, 0, 0, 50), MINI, "gpt-4o-mini")
    assert ledger.reserved == 0 and ledger.spent == pytest.approx(100 * 0.15e-6 + 50 * 0.6e-6)
    # None named: one is added, in the name the API takes.
    third = plan(ledger, {"model": "gpt-4o-mini"}, 300, MINI, "responses")
    assert 0 < third.body["max_output_tokens"] <= 16384
    ledger.settle(third.estimate, None, MINI, "gpt-4o-mini")  # a reply that said nothing costs its estimate
    assert ledger.left < MIN_OUTPUT_TOKENS * MINI.output
    assert plan(ledger, body, 300, MINI, "openai").refusal
    assert (ledger.calls, ledger.refused) == (2, 2)


def test_a_model_without_a_price_is_never_refused_and_is_named() -> None:
    ledger = Ledger(budget_usd=0.000001)
    for _ in range(3):
        decided = plan(ledger, {"model": "local"}, 10_000, None, "openai")
        assert not decided.refusal and decided.body == {"model": "local"}
        ledger.settle(decided.estimate, Usage(1000, 0, 0, 10), None, "local")
    assert (ledger.spent, ledger.tokens_in, ledger.unpriced) == (0.0, 3000, {"local"})
