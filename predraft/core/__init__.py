"""The foundation of the running service: settings, the database (schema, sessions, study queries), states,
events, metrics, the clock and logging set-up. It imports only the pure libraries below it
(:mod:`predraft.reporting`, :mod:`predraft.models`); every stage above imports it (docs/architecture.md)."""
