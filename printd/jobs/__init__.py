"""Durable print jobs: model, pending-request registry, dispatch service, HTTP API."""
