"""What names a Z-Image checkpoint, shared by the resolver (model/sources.py) and the random-weight writer
(testing/checkpoint.py)."""

DEFAULT_HUB_ID = "Tongyi-MAI/Z-Image-Turbo"
RANDOM_WEIGHTS_MARKER = "RANDOM_TEST_WEIGHTS"  # a file in a checkpoint written with random weights
CONTROLNET_VERSIONS = ("1.0", "2.0", "2.1")  # the Union ControlNets as published (testing/controlnet.py writes them)
