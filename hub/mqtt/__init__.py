"""The device link: the hub's MQTT session, reading, the per-device intake, the ingest,
acknowledgements, and holding off or ending a device's session.
"""
