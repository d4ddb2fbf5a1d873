"""Flow control shared by the whole cluster through Redis (ARCHITECTURE.md, "Flow control").

* :mod:`app.flow.policy` — who is limited: a plugin's cap (manifest, operator
  override) and whether the model has a request budget.
* :mod:`app.flow.slots` — runs in flight per plugin, tied to leases so a dead
  worker's slot comes back.
* :mod:`app.flow.budget` — the model's request budget (a rolling window) and
  the cluster-wide pause after a provider's 429.
* :mod:`app.flow.worker` — the worker's side: holding and releasing a run's
  slot, and the gate every LLM request passes.

The consumer's side (holding entries back in the stream) is
:mod:`app.streams.gate`. Every Redis key is named in :mod:`app.keys`;
every script reads Redis's clock, so hosts with skewed clocks agree.
"""
