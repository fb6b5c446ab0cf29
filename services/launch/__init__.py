"""Launching the services: which there are and how each is started (``registry``).

The command line, the supervisor of `aaa-failover up`, the demo and the
benchmarks read the services from here, so the list is written once.
"""
