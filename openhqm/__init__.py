"""The original OpenHQM's module names, kept so its commands and manifests run
unchanged: ``python -m openhqm.api.listener`` is ``hqm proxy`` and ``python -m
openhqm.worker.worker`` is ``hqm worker``, both reading its OPENHQM_* settings."""
