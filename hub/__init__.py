"""The Outpost hub: fleet registry, enrollment, the managed broker and the web endpoint."""
