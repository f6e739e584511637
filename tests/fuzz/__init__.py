"""Seeded fuzzing of predraft's inputs: the seeds (every real fixture, re-encoded small) and the mutator."""
