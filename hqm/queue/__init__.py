"""Queue backends behind one interface (``hqm.queue.base.Queue``)."""
