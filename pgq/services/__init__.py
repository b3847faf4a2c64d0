"""Background services a worker (or `pgq beat`) runs beside claiming: the scheduler."""
