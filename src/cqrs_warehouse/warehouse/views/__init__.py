"""Read models of the warehouse."""
