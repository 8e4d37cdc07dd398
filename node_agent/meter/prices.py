"""litellm's model price map, read from the JSON file litellm ships, without importing it.

The daemon never imports litellm (it costs ~3 s and 180 MB), and the proxy need not
either: ``model_prices_and_context_window_backup.json`` sits in litellm's package
directory, found with ``importlib.util.find_spec`` (which runs nothing of the package).
Only that local file is read (LITELLM_LOCAL_MODEL_COST_MAP=True semantics: the map is
never fetched).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAP_FILE", "Price", "load", "lookup"]

MAP_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True)
class Price:
    """USD per token."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    max_output: int  # the model's own cap on a reply's tokens; 0: not known


def map_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    for where in (spec.submodule_search_locations or []) if spec else []:
        path = Path(where) / MAP_FILE
        if path.is_file():
            return path
    return None


def load(path: Path | None = None) -> dict[str, Price]:
    """Every priced model of the map, by its name there; {} without litellm's file."""
    path = path or map_path()
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    prices: dict[str, Price] = {}
    for name, entry in data.items() if isinstance(data, dict) else ():
        if not isinstance(entry, Mapping):
            continue
        price = Price(
            _number(entry, "input_cost_per_token"),
            _number(entry, "output_cost_per_token"),
            _number(entry, "cache_read_input_token_cost"),
            _number(entry, "cache_creation_input_token_cost"),
            int(_number(entry, "max_output_tokens")),
        )
        if price.input or price.output:
            prices[name] = price
    return prices


def lookup(prices: Mapping[str, Price], model: str) -> Price | None:
    """The price of ``model`` as a client names it: as is, else without its
    ``provider/`` prefix ("openai/gpt-4o-mini" is the map's "gpt-4o-mini")."""
    model = model.strip()
    found = prices.get(model)
    if found is None and "/" in model:
        found = prices.get(model.split("/", 1)[1])
    return found


def _number(entry: Mapping[str, object], key: str) -> float:
    value = entry.get(key)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0
    )
