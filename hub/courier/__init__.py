"""The hub's end of courier bundles (outpost/courier): importing a device's bundle, and
writing bundles for devices (acknowledgements, policy)."""
