"""Metric collection: FreeRADIUS Status-Server figures and psutil process figures."""
