"""What the tests share and are not tests: servers started for them, helpers, recorded runs."""
