"""The browser dashboard (docs/dashboard.md): server-rendered pages whose small JS talks to the REST API."""
