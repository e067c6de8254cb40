"""The saga orchestrator: the workflow definition, the pure engine, and the runner that applies it."""
