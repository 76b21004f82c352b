"""Fault injection for tests: an application whose generator's engine raises GPU out-of-memory on demand.

Reachable from Python only (``build_app_with_ooms``), never from serve_config.yaml: the production
config has no fault knobs.
"""

from __future__ import annotations

from ray import serve

from ..serving.builder import build, resolved_config
from ..serving.generator import Generator


class OomInjectingGenerator(Generator):
    """A Generator whose next ``ooms`` engine calls raise the engine's OutOfMemory error."""

    def __init__(self, config: dict, ooms: int):
        super().__init__(config)
        self.ooms = ooms

    def _engine_generate(self, jobs):
        from ..model.engine import OutOfMemory  # in the replica, with torch

        if self.ooms > 0:
            self.ooms -= 1
            raise OutOfMemory("CUDA out of memory (injected for a test)")
        return super()._engine_generate(jobs)


def build_app_with_ooms(args: dict, ooms: int):
    """The real application, its generator replicas failing their next ``ooms`` engine calls with OOM."""
    deployment = serve.deployment(name="Generator")(OomInjectingGenerator)
    return build(resolved_config(args), generator_deployment=deployment, generator_args=(ooms,))
