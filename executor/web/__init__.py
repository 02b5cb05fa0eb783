"""The local read-only dashboard served by `executor serve` (and its /metrics).

A separate process that opens the database read-only; the daemon never imports this package.
"""
