"""What instances share: the message bus and agent presence.

Each concept is an interface with an in-process implementation for a single instance; the
Redis implementations for a cluster implement the same interfaces.
"""
