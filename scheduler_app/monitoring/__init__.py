"""Watching the platform: schedule health (late / failing), alerts, Prometheus metrics,
readiness checks, and the probe views that serve `/readyz` and `/metrics`."""
