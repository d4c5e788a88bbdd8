"""The tests' throwaway PostgreSQL server (shared with the replica demo)."""

from scripts.pgcluster import ThrowawayPostgres

__all__ = ["ThrowawayPostgres"]
