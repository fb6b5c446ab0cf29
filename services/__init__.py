"""The aaa-failover microservices and their shared runtime."""
