"""The reliability suite: faults, load and bad input against a real redis-server and real
worker processes. `make test` runs every scenario at its quick size except the soak;
`make test-reliability` runs them at full size, the 10-minute soak included, and writes
the figures into docs/reliability.md (the hooks that start and write the report are in
tests/conftest.py, which pytest-xdist's controlling process loads too)."""
