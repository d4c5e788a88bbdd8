"""Tasks: who runs each (allocation) and sending assignments and cancellations."""
