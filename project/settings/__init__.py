"""Settings: `base` (shared, from the environment), `local`, `production`, `test`."""
