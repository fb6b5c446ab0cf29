"""What every service shares: the bus, config, lifecycle and embedded nats-server."""
