"""Helper for test_distributed_eval.py: evaluate an untrained model on the test split with N CPU processes.

usage: python ddp_eval.py TASK DEVICES OUT.json
Every process builds the same model (same seed); rank 0 writes the metrics (and, for an LLM task, the answers).
"""

import json
import sys
from pathlib import Path

import torch
from lightning_fabric import Fabric

from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import load_recipe
from molbridge.core.registry import build_components

TINY = [
    "encoder.preset=small",
    "data.eval_limit=10",
    "data.eval_batch_size=4",
    "tracking.enabled=false",
    "train.init_from=null",
]
EXTRA = {
    "retrieval": ["projector.num_layers=1", "task.baseline=false", "task.inbatch_size=4"],
    "qa": ["projector.num_layers=1", "task.max_new_tokens=6", "task.descriptive_max_new_tokens=6"],
}

if __name__ == "__main__":
    task_name, devices, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    registry = load_plugins(external=False).registry
    recipe = load_recipe(task_name, TINY + EXTRA[task_name], registry)
    fabric = Fabric(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto")
    fabric.launch()
    torch.manual_seed(0)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    model = task.build_model(build_components(recipe, registry))
    metrics = task.evaluate(model, fabric, "test")
    if fabric.is_global_zero:
        content = {"metrics": metrics, "world_size": fabric.world_size}
        if hasattr(task, "last_answers"):
            content["answers"] = task.last_answers[2]
        out.write_text(json.dumps(content))
