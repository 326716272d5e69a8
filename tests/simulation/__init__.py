"""The deterministic simulator (docs/design.md section 15): the real ledger and payments, against an
in-memory table with DynamoDB's semantics, on simulated containers scheduled from a seed, with
injected faults, every commit and answer checked against an independent model.

    python -m tests.simulation --seed S --ops N [--plant NAME]

Modules: `store` (the table), `scheduler` (containers, virtual time, faults at yield points),
`workload` (a seed's operations), `stripe` (the events delivered), `records`, `commits`,
`lotmodel`, `lotchecks` and `model` (the independent model and its checks, credit lots included),
`sim` (one run), `plants` (known bugs to patch in), `shrink` (the shortest failing history),
`__main__` (the command). See README.md.
"""
