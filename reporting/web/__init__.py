"""reporting/web."""
