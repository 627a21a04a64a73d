"""The ``pdeserve`` command line: the one place that may reach every layer."""
