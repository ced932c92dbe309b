"""The request path: resolve, admit, route, call, relay, account (see DESIGN.md)."""
