"""What runs inside a worker: the PlatformTask policy, the run context, overlap locks, the
heartbeat of held messages, run states, and the recording of runs into the ledger."""
