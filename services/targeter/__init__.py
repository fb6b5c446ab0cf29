"""The targeter: which clients of an overloaded server move, and to which alternates."""
