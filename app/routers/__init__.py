"""REST routers (DESIGN.md §6), mounted under ``/api/v1`` by :func:`app.main.create_app`."""
