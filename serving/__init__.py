"""The prediction API: FastAPI model server on Feast online features."""
