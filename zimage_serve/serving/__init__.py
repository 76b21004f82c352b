"""Serving on Ray Serve, one request flowing one way: HTTP -> ingress -> prompt encoder -> generator -> engine.

- ``protocol``: the wire types with their bounds, and the one error shape.
- ``http``: thin FastAPI routes over the service, auth, the body cap, and the one map from domain
  errors to HTTP statuses.
- ``service``: what the routes do, as a plain class: wire body -> ``GenerationRequest``, admission,
  fan-out; raises domain errors, never HTTP statuses.
- ``ingress``, ``encoder``, ``generator``: the three deployments, each owning its Serve options;
  ``batcher`` forms the generator's batches when the GPU is free; ``embedding_cache`` the encoder's.
- ``metrics``: Prometheus metrics through Serve; ``builder``: the application; ``local``: ``zimage-serve serve``.

May import ``core``, ``settings`` and ``model`` -- the last only inside the encoder's and generator's
replicas (their constructors and methods), so that importing any module here imports no torch.
"""
