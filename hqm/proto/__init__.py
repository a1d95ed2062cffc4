"""Sans-IO protocol code: bytes in, events out. No sockets, no asyncio, no clock here."""
