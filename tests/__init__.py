"""feastkit test suite."""
