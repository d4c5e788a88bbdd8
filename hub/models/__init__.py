"""Models: uploaded releases, staged roll-outs, and drift of their answers."""
