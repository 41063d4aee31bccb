"""The platform: catalog, seeding, schedules, run history, launcher, admin console."""
