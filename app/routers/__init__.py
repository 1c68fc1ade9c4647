"""REST routers (docs/deployment.md), mounted under ``/api/v1`` by :func:`app.main.create_app`."""
