"""The Outpost agent: the daemon on each device. It never imports the hub."""
