"""Operator tools that watch the bus: `aaa-failover tail`."""
