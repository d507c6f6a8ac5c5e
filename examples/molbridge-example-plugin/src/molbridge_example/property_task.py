"""The ``property`` task: regress one molecular property from 3D structure.

encoder -> projector -> mean of the soft tokens -> linear head, trained with MSE on the standardised
target. Evaluation reports the MAE in the property's units next to a predict-the-training-mean baseline.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from molbridge.core import batch as keys
from molbridge.core.contracts import StepOutput, Task
from molbridge.core.data import MoleculeDataset


@dataclass
class PropertyTaskConfig:
    name: str = "property"
    target: str = "xtb_gap"
    """A property stored with the dataset (``bench data info NAME`` lists them)."""


class PropertyModel(nn.Module):
    def __init__(self, encoder, projector):
        super().__init__()
        self.encoder, self.projector = encoder, projector
        self.head = nn.Linear(projector.output_dim, 1)

    def forward(self, encoder_input):
        tokens = self.projector(self.encoder(encoder_input))
        return self.head(tokens.mean(dim=1)).squeeze(-1)


class PropertyTask(Task):
    monitor = ("mae", "min")

    def __init__(self, config, recipe, registry=None):
        self.config, self.recipe = config, recipe
        self.splits, self.encoder = None, None

    def _value(self, dataset, i):
        row = int(dataset.indices[i])
        return float(dataset.store[row].properties[self.config.target])

    def build_model(self, components):
        self.encoder = components.encoder
        return PropertyModel(components.encoder, components.projector)

    def datasets(self):
        """The splits, read on first use (building a task reads no data)."""
        if self.splits is None:
            data = self.recipe.data
            self.splits = {
                split: MoleculeDataset.from_split(data.name, split, data.split, seed=self.recipe.seed)
                for split in ("train", "valid", "test")
            }
            train = self.splits["train"]
            values = torch.tensor([self._value(train, i) for i in range(len(train))])
            self.mean, self.std = values.mean(), values.std().clamp(min=1e-6)
        return self.splits

    def collate(self, samples):
        features = [self.encoder.featurize_item(s) for s in samples]
        target = torch.tensor([s["properties"][self.config.target] for s in samples], dtype=torch.float32)
        return {
            keys.ENCODER_INPUT: self.encoder.collate(features),
            keys.TARGET: (target - self.mean) / self.std,
            keys.MOL_ID: [s[keys.MOL_ID] for s in samples],
        }

    def training_step(self, model, batch):
        loss = nn.functional.mse_loss(model(batch[keys.ENCODER_INPUT]), batch[keys.TARGET])
        return StepOutput(loss, {"mse": loss.detach()})

    @torch.no_grad()
    def evaluate(self, model, fabric, split):
        loader = DataLoader(
            self.datasets()[split], batch_size=self.recipe.data.eval_batch_size, collate_fn=self.collate
        )
        model.eval()
        errors, baseline = [], []
        for batch in loader:
            batch = fabric.to_device(batch)
            truth = batch[keys.TARGET] * self.std + self.mean
            errors.append((model(batch[keys.ENCODER_INPUT]) * self.std + self.mean - truth).abs().cpu())
            baseline.append((truth - self.mean).abs().cpu())
        model.train()
        return {"mae": torch.cat(errors).mean().item(), "baseline_mae": torch.cat(baseline).mean().item()}

    def describe(self):
        return {
            "target": self.config.target,
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.datasets().items()},
            "baseline": "predict the training mean",
        }
