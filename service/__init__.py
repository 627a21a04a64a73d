"""Serving: the request schema, the model registry, ONNX Runtime, and the Ray Serve app.

``schema`` is the public contract of ``POST /solve``; ``registry`` stores versioned
models with their cards; ``runner`` runs a model's ONNX graph; ``app`` is the Serve
application (``plan`` decides what runs per request, ``batching`` groups problems for
the surrogate); ``client`` is the SDK and ``cli`` the ``pdeserve`` commands.
"""
