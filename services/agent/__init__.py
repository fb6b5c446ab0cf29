"""The agent: the AAA-client side, which verifies notices, fails over and asks to return."""
