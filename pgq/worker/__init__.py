"""The worker: supervisor (claims, dispatches, completes) → pool → executor."""
