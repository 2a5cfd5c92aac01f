"""What a model's layers hold in memory, known before training: hpccnn.training.memory's estimate reads it from a
built-in network's settings (hpccnn.models.zoo) or from a user's model as built (hpccnn.models.usermodel)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Layers:
    """What memory a model's layers take: parameters, and the elements they keep per image."""

    parameters: int
    kept_per_image: int  # the elements of the forward pass kept for the backward pass
    largest_per_image: int  # the largest layer output
