"""Operator tools over the bus and its recorded stream: tail, replay, what-if, report."""
