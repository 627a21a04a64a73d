"""Serving: the request schema, the planner, routing, and the Ray Serve application.

``schema`` is the public contract of ``POST /solve``; ``app`` builds the Serve
application (``ingress`` the routes, ``plan`` decides what runs per request, ``routing``
which published model answers a request that names none, ``surrogate`` and ``exact``
the two solver deployments); ``client`` is the SDK and ``cli`` the ``pdeserve``
commands of the service. Published models are read and run through ``modelstore``.
"""
