"""The metering proxy: a job with a budget reaches its model provider only through it.

For such a job the node starts one small proxy process (``python -m node_agent.meter``)
on 127.0.0.1, speaking the OpenAI and the Anthropic HTTP APIs, in front of the job's
real provider. The job is told its address (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, the llm
agent's FLOTA_LLM_API_BASE ...) and a token of its own in place of the key; the real key
stays with the proxy. The proxy counts every call's tokens and cost (litellm's price map,
read from its file: nothing imports litellm) and refuses the call that would pass the
budget, in the provider's own error format.

- :mod:`~node_agent.meter.prices`: litellm's price map, from its package data.
- :mod:`~node_agent.meter.usage`: **pure**: usage read from replies and streams, what a
  call may cost before it is made, and the ledger that admits or refuses it.
- :mod:`~node_agent.meter.proxy`: the aiohttp application (the proxy process's).
- :mod:`~node_agent.meter.__main__`: the process: its settings on stdin, its figures in a file.
- :mod:`~node_agent.meter.control`: the daemon's side: start, the job's environment, the
  figures, stop.
"""
