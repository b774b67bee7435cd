"""Integration tests: real Feast registries, sqlite and Redis online stores, HTTP servers, the CLI."""
