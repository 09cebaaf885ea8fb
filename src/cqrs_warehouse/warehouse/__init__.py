"""The warehouse slice: commands with their own state, the products view and
the low-quantity notifier. Depends on the messaging core, never the reverse."""
