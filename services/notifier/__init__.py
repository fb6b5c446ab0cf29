"""The notifier: notices to clients over the bus, with delivery tracking and retries."""
