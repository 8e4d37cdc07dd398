"""The model seam the loop calls, and its one implementation on litellm.

This is the only module that imports litellm, and only when a :class:`LiteLLMModel` is
made (when the agent runs): importing it, or anything else of the agent, stays cheap
(DESIGN rule 7: the daemon never imports litellm).

Accounting: :meth:`LiteLLMModel.estimate_usd` prices a call before it is made (prompt
tokens by litellm's token counter times the input price, plus the max_tokens asked for
times the output price); a reply's cost is litellm's per-response cost (usage times the
price map). A model without a price costs 0.

Error handling: litellm's exceptions become :class:`ModelError` (retrying cannot help:
authentication, bad request, unknown model, context overflow), :class:`TransientModelError`
(5xx, rate limit, a dropped connection, an unparseable response) or :class:`ModelTimeout`;
HTTP 402 (the node's metering proxy refused the call for the job's budget) is
:class:`BudgetRefused`;
a call that could not connect at all is :class:`Unreachable`, read from the exception's
chain (litellm reports a refused connection as an InternalServerError), never from its
wording. A model litellm cannot route, or a missing API key, is :class:`BadInput`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node_agent.agents.llm.errors import (
    BadInput,
    BudgetRefused,
    ModelError,
    ModelTimeout,
    TransientModelError,
    Unreachable,
)
from node_agent.agents.llm.tools import TOOL_SCHEMAS

__all__ = ["Completion", "LiteLLMModel", "Model", "ToolCall"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # as the model sent it: JSON, hopefully


@dataclass(frozen=True)
class Completion:
    """One reply, reduced to what the loop needs."""

    has_choice: bool
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    tokens_in: int
    tokens_out: int
    cost_usd: float


class Model(Protocol):
    name: str
    priced: bool  # False: the price map knows no price, the model costs nothing
    max_output_tokens: int | None  # the model's own cap, when known

    def estimate_usd(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float: ...

    def complete(
        self, messages: Sequence[Mapping[str, Any]], max_tokens: int, timeout_s: float | None
    ) -> Completion: ...


class LiteLLMModel:
    """:class:`Model` on litellm (imported here, when the agent runs, never at import)."""

    def __init__(self, name: str, api_base: str | None) -> None:
        """Raises :class:`BadInput` for a model litellm cannot route or a missing API key.

        Provider keys are read by litellm from the process environment (os.environ).
        """
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price map
        import litellm

        litellm.suppress_debug_info = True  # no "Provider List" banners on stdout
        litellm.disable_hf_tokenizer_download = True  # count tokens with tiktoken, offline
        litellm.drop_params = True
        for logger_name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
        self._litellm = litellm
        self.name = name
        self._api_base = api_base
        self._kwargs: dict[str, Any] = {}
        try:
            _, provider, _, _ = litellm.get_llm_provider(name)
        except Exception:
            if not api_base:
                raise BadInput(
                    f"FLOTA_LLM_MODEL: no known provider in {name!r}; write provider/model "
                    "(openai/gpt-4o, anthropic/..., ollama/...) or set FLOTA_LLM_API_BASE"
                ) from None
            provider = "openai"  # a bare name served at an OpenAI-compatible base
            self._kwargs["custom_llm_provider"] = "openai"
        if api_base:
            self._kwargs["api_base"] = api_base
            if provider == "openai" and not os.environ.get("OPENAI_API_KEY"):
                self._kwargs["api_key"] = "none"  # local servers need none; the client wants one
        else:
            try:
                missing = litellm.validate_environment(name).get("missing_keys") or []
            except Exception:
                missing = []
            keys = [k for k in missing if str(k).endswith("_API_KEY")]  # not bases: they have defaults
            if keys:
                raise BadInput(f"{name} needs {', '.join(keys)} in the environment")
        info: Mapping[str, Any]
        try:
            info = litellm.get_model_info(name, custom_llm_provider=self._kwargs.get("custom_llm_provider"))
        except Exception:  # not in the map: a local or unknown model, which costs nothing
            info = {}
        self._input_price = float(info.get("input_cost_per_token") or 0.0)
        self._output_price = float(info.get("output_cost_per_token") or 0.0)
        self.priced = self._input_price > 0 or self._output_price > 0
        cap = info.get("max_output_tokens")
        self.max_output_tokens = int(cap) if isinstance(cap, int) and cap > 0 else None

    def estimate_usd(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float:
        try:
            tokens = int(
                self._litellm.token_counter(model=self.name, messages=list(messages), tools=TOOL_SCHEMAS)
            )
        except Exception:  # a message shape the counter does not know: count characters
            tokens = len(json.dumps(list(messages))) // 3 + len(json.dumps(TOOL_SCHEMAS)) // 3
        return tokens * self._input_price + max_tokens * self._output_price

    def complete(
        self, messages: Sequence[Mapping[str, Any]], max_tokens: int, timeout_s: float | None
    ) -> Completion:
        litellm = self._litellm
        kwargs = dict(self._kwargs)
        if timeout_s is not None:
            kwargs["timeout"] = max(timeout_s, 0.05)
        try:
            response = litellm.completion(
                model=self.name,
                messages=list(messages),
                tools=TOOL_SCHEMAS,
                max_tokens=max_tokens,
                max_retries=0,  # we retry ourselves, within the deadline
                # litellm 1.106 imports its proxy's MCP gateway (and the absent `mcp`
                # package) whenever tools are passed; ours are plain functions.
                _skip_mcp_handler=True,
                **kwargs,
            )
        except litellm.Timeout as exc:
            raise ModelTimeout(_first_line(exc)) from exc
        except litellm.ContextWindowExceededError as exc:
            raise ModelError(f"context window exceeded: {_first_line(exc)}") from exc
        except (
            litellm.AuthenticationError,
            litellm.PermissionDeniedError,
            litellm.NotFoundError,
            litellm.BadRequestError,
            litellm.UnsupportedParamsError,
        ) as exc:
            raise _budget(exc) or ModelError(_first_line(exc)) from exc
        except (
            litellm.RateLimitError,
            litellm.APIConnectionError,
            litellm.ServiceUnavailableError,
            litellm.InternalServerError,
            litellm.BadGatewayError,
            litellm.APIError,
        ) as exc:
            raise _budget(exc) or self._unreachable(exc) or TransientModelError(_first_line(exc)) from exc
        except Exception as exc:  # anything else litellm lets through: a garbled response
            raise self._unreachable(exc) or TransientModelError(
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        return self._completion(response)

    def _unreachable(self, exc: BaseException) -> Unreachable | None:
        """`exc` as :class:`Unreachable` if no connection to the server was made, else None."""
        import httpx  # litellm's own transport, already imported with it

        chain = _chain(exc)
        connect = next((e for e in chain if isinstance(e, httpx.ConnectError)), None)
        if connect is None:
            return None
        where = self._api_base
        if not where:
            try:
                url = connect.request.url
                where = f"{url.scheme}://{url.netloc.decode()}"
            except RuntimeError:  # no request attached: name the model instead
                where = f"for {self.name}"
        at = where if where.startswith("for ") else f"at {where}"
        return Unreachable(f"cannot reach the model server {at}: {_why_no_connection(chain, connect)}")

    def _completion(self, response: Any) -> Completion:
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = 0.0
        if self.priced:
            hidden = getattr(response, "_hidden_params", None) or {}
            reported = hidden.get("response_cost") if isinstance(hidden, dict) else None
            if isinstance(reported, int | float):
                cost = float(reported)
            else:
                cost = tokens_in * self._input_price + tokens_out * self._output_price
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            return Completion(False, None, (), tokens_in, tokens_out, cost)
        calls = []
        for tc in getattr(message, "tool_calls", None) or []:
            function = getattr(tc, "function", None)
            arguments = getattr(function, "arguments", None)
            if not isinstance(arguments, str):  # some servers send an object
                arguments = json.dumps(arguments) if arguments is not None else ""
            calls.append(
                ToolCall(
                    str(getattr(tc, "id", "") or ""), str(getattr(function, "name", "") or ""), arguments
                )
            )
        content = getattr(message, "content", None)
        return Completion(
            True, content if isinstance(content, str) else None, tuple(calls), tokens_in, tokens_out, cost
        )


def _budget(exc: BaseException) -> BudgetRefused | None:
    """HTTP 402, payment required (litellm raises it as an APIError for OpenAI, a
    BadRequestError for Anthropic): the metering proxy refused the call for the budget."""
    if getattr(exc, "status_code", None) != 402:
        return None
    line = _first_line(exc)  # the proxy's line, without litellm's prefixes
    return BudgetRefused(line[line.find("flota: ") :] if "flota: " in line else line)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (or during), outermost first."""
    found: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not e for e in found):
        found.append(link)
        link = link.__cause__ or link.__context__
    return found


def _why_no_connection(chain: list[BaseException], connect: BaseException) -> str:
    """A few words on why a connection failed, from the innermost cause that says."""
    for e in reversed(chain):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "its host name does not resolve"
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({e.verify_message or e.reason})"
        if isinstance(e, ssl.SSLError):
            return f"TLS handshake failed ({(e.reason or _first_line(e)).lower().replace('_', ' ')})"
        if isinstance(e, OSError) and e.errno is not None and e.errno in errno.errorcode:
            return os.strerror(e.errno).lower()
    return _first_line(connect)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
