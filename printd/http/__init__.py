"""Plain HTTP on the gateway's port: request/response types, routing, the listener."""
