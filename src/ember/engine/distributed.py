"""The process group as the loop sees it. One process today; torchrun plugs in here."""
from __future__ import annotations

import torch


class World:
    """Rank, size and the reductions the loop needs, so the loop reads the same on 1 or N processes."""

    def __init__(self):
        self.rank, self.size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (identity on one process)."""
        return tensor

    def barrier(self) -> None:
        pass
