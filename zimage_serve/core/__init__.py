"""The domain, with no torch and no Ray: the typed request, bounds and their checks, output formats, errors.

Everything above imports from here; ``core`` imports nothing of the package but itself. A new generation
mode starts here, as fields of :class:`~zimage_serve.core.request.GenerationRequest`.
"""
