"""The API's routers: predict, push, operations and monitoring (assembled by serving.app.create_app)."""
