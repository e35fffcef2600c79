"""Benchmark scripts: they print figures and write JSON; tests only smoke-run them."""
