"""The hub database's schema, as named migrations applied in order, on either back-end.

Written in SQLite's types (INTEGER, REAL, TEXT, BLOB); on PostgreSQL each table
definition is given PostgreSQL's names for them (postgres.translate), so one list of
migrations makes both schemas. What only one back-end needs is marked by `db.dialect`.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.store.migrations import courier, fleet, models, sinks, work
from hub.store.sql import Sql

Migration = tuple[str, Callable[[Sql], None]]

MIGRATIONS: list[Migration] = [
    ("001_registry", fleet.m001_registry),
    ("002_api", fleet.m002_api),
    ("003_records", work.m003_records),
    ("004_device_store", work.m004_device_store),
    ("005_device_models", work.m005_device_models),
    ("006_tasks", work.m006_tasks),
    ("007_policy", work.m007_policy),
    ("008_device_certs", fleet.m008_device_certs),
    ("009_models", models.m009_models),
    ("010_model_stats", models.m010_model_stats),
    ("011_revoked_by", fleet.m011_revoked_by),
    ("012_holds", fleet.m012_holds),
    ("013_leadership", fleet.m013_leadership),
    ("014_model_files", models.m014_model_files),
    ("015_device_names", fleet.m015_device_names),
    ("016_device_events", fleet.m016_device_events),
    ("017_outbox", sinks.m017_outbox),
    ("018_drift_levels", models.m018_drift_levels),
    ("019_courier", courier.m019_courier),
    ("020_agent_releases", fleet.m020_agent_releases),
    ("021_agent_release_files", fleet.m021_agent_release_files),
    ("022_shadow_rollouts", models.m022_shadow_rollouts),
    ("023_task_sweeps", work.m023_task_sweeps),
    ("024_sealed_offers", models.m024_sealed_offers),
    ("025_enroll_retry", fleet.m025_enroll_retry),
    ("026_device_busy", work.m026_device_busy),
    ("027_enroll_answer", fleet.m027_enroll_answer),
    ("028_enroll_token_revocation", fleet.m028_enroll_token_revocation),
]
