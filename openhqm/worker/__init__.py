"""``openhqm.worker.worker``: the original's worker command."""
