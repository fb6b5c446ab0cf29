"""The evaluator: health scores of servers and their overload incidents."""
