"""OpenHQM: an async queue sidecar for HTTP/1.1 applications."""

__version__ = "0.1.0"
