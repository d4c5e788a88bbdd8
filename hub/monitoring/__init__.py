"""The hub's Prometheus metrics: the fleet's, the models', and this replica's."""
