"""Bare baselines of the stack the service runs on, measured in the same run as the service."""
