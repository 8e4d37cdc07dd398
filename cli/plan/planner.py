"""The planner: a model (litellm: any cloud or local one) splits a feature into the
tasks of a plan. It runs here, on the workstation, in the CLI's own process; this module
is imported only when `flota plan` runs (litellm is slow to import).

The model sees the repository (`context.repo_context`) and the plan's schema, and must
answer with JSON matching it. An answer that is not one (no JSON, or a plan with
problems) is told back, with the checker's lines, up to `attempts` answers in all; then
PlanFailed says why in one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cli.plan.schema import PLAN_KEYS, TASK_KEYS, Plan, check

__all__ = ["SYSTEM", "PlanFailed", "Planner"]

SYSTEM = f"""You plan software work for a fleet of coding agents. Split the feature the user
asks for into a few tasks, each for one role (coder, tester, docs, reviewer, or any word).
Tasks run in parallel unless one depends on another; a task that depends on others starts
from their finished work. Give each task the files it will own (globs) so that tasks
running at the same time do not edit the same files.

Answer with one JSON object and nothing else:
{{"tasks": [{{"id": "coder", "role": "coder", "prompt": "what to do, fully", "depends_on": [],
  "files": ["src/*.py"]}}, ...]}}
Plan keys: {", ".join(PLAN_KEYS)}. Task keys: {", ".join(TASK_KEYS)}. Every task needs an id
(letters, digits, . _ -) and a prompt; depends_on names other tasks' ids; no cycles."""

_FENCE = re.compile(r"```(?:json|yaml)?\s*(.*?)```", re.S)


class PlanFailed(Exception):
    """The planner gave no valid plan: one line."""


@dataclass
class Planner:
    model: str
    api_base: str = ""
    attempts: int = 3
    timeout_s: float = 120.0
    max_tokens: int = 4096  # of each answer
    defaults: dict[str, Any] = field(default_factory=dict)  # the plan's run-wide keys (agent, ...)

    def plan(self, feature: str, context: str, paths: Sequence[str] = ()) -> tuple[Plan, int]:
        """The plan, and how many answers it took."""
        messages: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{context}\n\n## The feature\n{feature}"},
        ]
        problems: list[str] = []
        for attempt in range(1, self.attempts + 1):
            answer = self._ask(messages)
            data, problems = self._read(answer, feature, paths)
            if data is not None:
                return data, attempt
            messages += [
                {"role": "assistant", "content": answer},
                {
                    "role": "user",
                    "content": "That is not a valid plan:\n"
                    + "\n".join(f"- {p}" for p in problems)
                    + "\nAnswer again with the whole plan as one JSON object.",
                },
            ]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        last = f"{problems[0]}{more}"
        raise PlanFailed(
            f"the planner {self.model} gave no valid plan in {self.attempts} answers; last: {last}"
        )

    def _read(self, answer: str, feature: str, paths: Sequence[str]) -> tuple[Plan | None, list[str]]:
        fenced = _FENCE.search(answer)
        text = (fenced.group(1) if fenced else answer).strip()
        start, end = text.find("{"), text.rfind("}")
        if start >= 0 and end < start:
            return None, ["the answer's JSON object is cut off (no closing brace)"]
        try:
            data = json.loads(text[start : end + 1]) if start >= 0 else None
        except ValueError as exc:
            return None, [f"the answer is not JSON: {exc}"]
        if not isinstance(data, dict):
            return None, ["the answer has no JSON object"]
        data = {**self.defaults, **{k: v for k, v in data.items() if k not in self.defaults}}
        data.setdefault("feature", feature)
        return check(data, paths)

    def _ask(self, messages: list[dict[str, str]]) -> str:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price map
        import litellm

        litellm.suppress_debug_info = True
        litellm.drop_params = True  # a server without response_format still answers
        for name in ("LiteLLM", "LiteLLM Router", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        kwargs: dict[str, Any] = {}
        if self.api_base:
            kwargs["api_base"] = self.api_base
            if not os.environ.get("OPENAI_API_KEY"):
                kwargs["api_key"] = "none"  # local servers need none; the client wants one
            if "/" not in self.model:
                kwargs["custom_llm_provider"] = "openai"
        try:
            response = litellm.completion(
                model=self.model,
                messages=messages,
                response_format={"type": "json_object"},
                max_tokens=self.max_tokens,
                timeout=self.timeout_s,
                max_retries=1,
                **kwargs,
            )
            content = response.choices[0].message.content
        except Exception as exc:  # litellm's many errors, and a garbled reply: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PlanFailed(f"the planner {self.model} failed: {first[:300]}") from None
        return content if isinstance(content, str) else ""
