"""Processes of the warehouse: listeners that run commands."""
