"""The hub's HTTPS endpoint: a versioned JSON API, enrollment, Prometheus metrics.

Every route is declared once, in a `Route` table, with the role it needs; the same table
installs the handlers, guards them, and generates the OpenAPI document.
"""
