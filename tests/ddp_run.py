"""Helper for test_ddp.py: one `run` under DDP. Lightning re-executes this file for the other ranks,
which is why it must be a script file and not `python -c`.

usage: python ddp_run.py RECIPE.yaml OUTPUT_DIR
"""

import sys
from pathlib import Path

from lightning_fabric.utilities.rank_zero import rank_zero_only

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import load_toy_plugin  # noqa: E402

from molbridge.core.errors import NonFiniteLossError  # noqa: E402
from molbridge.core.plugins import load_plugins  # noqa: E402
from molbridge.core.recipe import load_recipe  # noqa: E402
from molbridge.core.runner import run  # noqa: E402


class ReportRank:
    def on_step_end(self, loop, step, logs):
        if step == 1:
            print(f"rank {loop.fabric.global_rank} of {loop.fabric.world_size} trained step 1", flush=True)


if __name__ == "__main__":
    registry = load_plugins(external=False, extra=[load_toy_plugin()]).registry
    try:
        result = run(
            load_recipe(sys.argv[1], registry=registry),
            registry,
            output=Path(sys.argv[2]),
            callbacks=[ReportRank()],
        )
    except NonFiniteLossError as exc:
        print(f"rank {rank_zero_only.rank} stopped: {exc}", flush=True)
        sys.exit(3)
    print(f"rank {rank_zero_only.rank} finished: {result['status']}", flush=True)
