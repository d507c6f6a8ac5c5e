"""A tiny regression task for testing the loop: synthetic data, a small MLP, MSE loss.

Registered as task ``toy-regression`` through the ordinary hook, so tests exercise the same path as
real plugins. ``nan_at_call`` makes the N-th training step (1-based) return a NaN loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from molbridge.core import hookimpl
from molbridge.core.contracts import StepOutput, Task


@dataclass
class ToyTaskConfig:
    name: str = "toy-regression"
    size: int = 64
    """Training samples (valid and test get a quarter each)."""
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.0
    """Dropout in the model: exercises the RNG state in exact-resume tests."""
    nan_at_call: int | None = None
    """Return a NaN loss on this training_step call (1-based)."""
    nan_rank: int | None = None
    """Only on this process rank (DDP tests); null: on every rank."""


class ToyDataset(Dataset):
    def __init__(self, size: int, dim: int, seed: int, prefix: str):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, dim, generator=generator)
        weights = torch.linspace(-1.0, 1.0, dim)
        self.y = self.x @ weights + 0.1 * torch.randn(size, generator=generator)
        self.ids = [f"{prefix}-{i}" for i in range(size)]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sizes(self) -> list[int]:
        """Made-up molecule sizes, for size-bucketed batching."""
        return [5 + (7 * i) % 23 for i in range(len(self))]

    def __getitem__(self, i: int) -> dict:
        # a per-epoch shift stands in for a per-epoch conformer draw (exact resume must restore it)
        return {"mol_id": self.ids[i], "x": self.x[i] + 0.01 * self.epoch, "target": self.y[i]}


class ToyModel(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


class ToyRegression(Task):
    monitor = ("mse", "min")

    def __init__(self, config: ToyTaskConfig, recipe, registry):
        self.config, self.recipe, self.calls = config, recipe, 0
        quarter = max(1, config.size // 4)
        self.splits = {
            "train": ToyDataset(config.size, config.dim, 1, "train"),
            "valid": ToyDataset(quarter, config.dim, 2, "valid"),
            "test": ToyDataset(quarter, config.dim, 3, "test"),
        }

    def build_model(self, components) -> nn.Module:
        return ToyModel(self.config.dim, self.config.hidden, self.config.dropout)

    def datasets(self):
        return self.splits

    def collate(self, samples):
        return {
            "mol_id": [s["mol_id"] for s in samples],
            "x": torch.stack([s["x"] for s in samples]),
            "target": torch.stack([s["target"] for s in samples]),
        }

    def training_step(self, model, batch) -> StepOutput:
        self.calls += 1
        mse = nn.functional.mse_loss(model(batch["x"]), batch["target"])
        if self.calls == self.config.nan_at_call and self.config.nan_rank in (None, _rank()):
            mse = mse * float("nan")
        return StepOutput(mse, {"mse": mse.detach()})

    @torch.no_grad()
    def evaluate(self, model, fabric, split):
        model.eval()
        data = self.splits[split]
        x, y = data.x.to(fabric.device), data.y.to(fabric.device)
        pred = model(x)
        return {"mse": float(nn.functional.mse_loss(pred, y)), "mae": float((pred - y).abs().mean())}

    def describe(self):
        return {"dataset": "synthetic linear", "sizes": {k: len(v) for k, v in self.splits.items()}}


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


@hookimpl
def molbridge_register_tasks(register):
    register(
        "toy-regression",
        ToyRegression,
        config_schema=ToyTaskConfig,
        description="Synthetic linear regression (tests only)",
    )
