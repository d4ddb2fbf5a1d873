"""Fetching what users' settings point at: address policy, guarded transport, the fetcher.

Plugins use it as ``ctx.fetch(url)`` (:mod:`app.execution.contract`); the
modules: :mod:`~app.net.policy` (which addresses), :mod:`~app.net.transport`
(resolve once, connect to the checked address), :mod:`~app.net.guard` (total
deadline, stop signal), :mod:`~app.net.body` (size cap), :mod:`~app.net.fetch`
(redirects, errors), :mod:`~app.net.errors`. Importing this package imports
nothing heavy; :mod:`app.net.fetch` imports httpx.
"""
