"""mixauth's benchmark: ``python -m bench`` (HTTP throughput, latency, bcrypt ceiling, start-up, RSS) and
``python -m bench.limiter_memory`` (bytes per live rate-limiter bucket).

Modules, one job each:

- ``bench.__main__``: the command line; picks the settings and calls ``bench.suite``.
- ``bench.suite``: the run itself, phase by phase, and the ratios between the figures.
- ``bench.servers``: starting, probing, measuring and stopping the mixauth, ceiling and peer subprocesses.
- ``bench.ceiling``: the bare aiohttp server that answers GET /user's body with no work at all.
- ``bench.peer_fastapi_users``: the peer (``--peer``), fastapi-users' documented full example, run on uvicorn.
- ``bench.wrk``: running ``wrk`` with the Lua scripts in ``bench/lua`` and parsing its output.
- ``bench.bcrypt_ceiling``: bcrypt checks per second on this machine, in-process, on N threads.
- ``bench.machine``: what the machine and the software are (CPU, cores, versions, load).
- ``bench.report``: the results JSON, the Markdown table and the PNG chart.
- ``bench.backends``: ``--backend``'s PostgreSQL and Redis configurations, their checks, and the run's own
  databases and Redis keys, removed at the end.
- ``bench.limiter_memory``: the separate limiter-memory benchmark.
- ``bench.limiter_redis``: one rate-limiter hit's cost in memory and on Redis (also run by ``--backend redis``).

Nothing here runs in CI except one-second smoke runs (``tests/test_bench_smoke.py``,
``tests/test_bench_backends.py``).
"""
