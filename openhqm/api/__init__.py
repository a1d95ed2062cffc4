"""``openhqm.api.listener``: the original's API container command."""
