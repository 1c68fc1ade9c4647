"""The browser dashboard (DESIGN.md §9): server-rendered pages whose small JS talks to the REST API."""
