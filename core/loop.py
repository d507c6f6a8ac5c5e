"""The one training loop every task and stage uses (Lightning Fabric).

``fit`` freezes parameters by the recipe's glob patterns, trains with AdamW (warm-up + cosine),
accumulates gradients without needless synchronisation, clips, evaluates and checkpoints, and can
be interrupted (SIGINT/SIGTERM) and resumed exactly: the data position, optimizer, scheduler and RNG
states are all checkpointed.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from molbridge.core import batch as keys
from molbridge.core import checkpoint
from molbridge.core.contracts import StepOutput
from molbridge.core.data.batching import bucketed
from molbridge.core.errors import ContractError, MolbridgeError, NonFiniteLossError, RecipeError

if TYPE_CHECKING:
    from lightning_fabric import Fabric
    from omegaconf import DictConfig

    from molbridge.core.contracts import Task

log = logging.getLogger(__name__)


class Callback(Protocol):
    def on_step_end(self, loop: Loop, step: int, logs: Mapping[str, float]) -> None:
        """Called on every rank after each optimizer step; may call ``loop.request_stop()``."""


# --- data ---------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """A seeded shuffling sampler whose position (epoch, samples consumed) can be checkpointed.

    Written here because torch's samplers cannot start mid-epoch. Each epoch's permutation comes from
    a generator seeded by (seed, epoch), so it is the same after a restart; under DDP every rank takes
    an equal-length stride of it. The loop advances ``position`` as it consumes batches. With ``sizes``
    (``data.bucketing``) each rank's share is regrouped into batches of similar size
    (:func:`molbridge.core.data.batching.bucketed`), still a function of (seed, epoch) alone.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, sizes=None, batch_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.sizes, self.batch_size = sizes, batch_size
        self.epoch = 0
        self.position = 0  # samples of this rank's share already consumed in this epoch

    def per_rank(self) -> int:
        return self.size // self.world_size

    def __len__(self) -> int:
        return self.per_rank() - self.position

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[self.rank :: self.world_size][: self.per_rank()].tolist()
        if self.sizes is not None:
            mine = bucketed(mine, self.sizes, self.batch_size, seed=self.seed * 1_000_003 + self.epoch)
        return iter(mine[self.position :])

    def advance(self, samples: int) -> None:
        self.position += samples

    def next_epoch(self) -> None:
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _sizes(dataset: Dataset):
    """Per-item sizes for bucketing: the dataset's ``sizes()`` (through a ``Subset``); an error naming it if none."""
    base, rows = dataset, None
    if isinstance(dataset, Subset):
        base, rows = dataset.dataset, list(dataset.indices)
    if not hasattr(base, "sizes"):
        raise MolbridgeError(
            f"data.bucketing=true needs a training dataset with sizes(); {type(base).__name__} has none"
        )
    sizes = base.sizes()
    return sizes if rows is None else [sizes[i] for i in rows]


def _train_loader(
    fabric: Fabric, task: Task, dataset: Dataset, recipe: DictConfig
) -> tuple[DataLoader, ResumableSampler]:
    batch_size, seed, limit = recipe.data.batch_size, recipe.seed, recipe.data.limit
    if not isinstance(dataset, Sized):
        raise ContractError(
            f"task '{recipe.task.name}': the train dataset ({type(dataset).__name__}) has no len(); "
            "datasets() must return map-style datasets"
        )
    if limit is not None and limit < len(dataset):  # data.limit: a quick experiment on the first N
        dataset = Subset(dataset, range(limit))
    sizes = _sizes(dataset) if recipe.data.bucketing else None
    sampler = ResumableSampler(len(dataset), seed, fabric.global_rank, fabric.world_size, sizes, batch_size)
    if sampler.per_rank() < batch_size:
        raise RecipeError(
            recipe.recipe,
            [
                f"data.batch_size={batch_size} is larger than the {sampler.per_rank()} "
                f"training samples per process ({len(dataset)} over {fabric.world_size})"
            ],
        )
    # A private generator: otherwise creating a loader iterator draws from the global torch RNG, at a
    # different moment in a resumed run than in an uninterrupted one, and breaks exact resume.
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=task.collate,
        num_workers=recipe.data.num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    wrapped = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    assert not isinstance(wrapped, list)  # one loader in, one out
    return wrapped, sampler


# --- parameters and optimisation ----------------------------------------------------------------------


def apply_freezing(
    model: nn.Module, trainable: Sequence[str], frozen: Sequence[str], source: str = "recipe"
) -> tuple[int, int]:
    """Set ``requires_grad`` from glob patterns over parameter names; return (trainable, total) counts.

    A pattern that matches no parameter is an error (a typo would silently freeze everything).
    Parameters a component froze itself (e.g. a locked text tower) stay frozen: patterns only choose
    among the others.
    """
    names = [name for name, _ in model.named_parameters()]
    for key, patterns in (("train.trainable", trainable), ("train.frozen", frozen)):
        for pattern in patterns:
            if not any(fnmatch(name, pattern) for name in names):
                raise RecipeError(
                    source,
                    [
                        f"{key}: pattern '{pattern}' matches no parameter; parameters "
                        f"look like: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                    ],
                )
    for name, param in model.named_parameters():
        param.requires_grad_(
            param.requires_grad
            and any(fnmatch(name, p) for p in trainable)
            and not any(fnmatch(name, p) for p in frozen)
        )
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost submodules with parameters, all of them frozen (a frozen encoder, a locked text tower)."""
    found: list[str] = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        if name and params and not any(p.requires_grad for p in params):
            if not any(name.startswith(outer + ".") for outer in found):
                found.append(name)
    modules = dict(model.named_modules())
    return [modules[name] for name in found]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    source: str = "recipe",
    scope: str = "matrices",
    lr_scale: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters. ``scope`` ``matrices``: biases and norm weights (the 1-D ones) get no
    weight decay; ``all``: every parameter decays (3D-MoLM's ``AdamW(self.parameters(), ...)``). ``lr_scale``
    (``train.lr_scale``) multiplies the rate of the parameters its glob patterns name; the first match wins."""
    trainable = [(plain_name(name), p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise RecipeError(source, ["train.trainable/train.frozen leave no parameter to train"])
    patterns = dict(lr_scale or {})
    unmatched = [k for k in patterns if not any(fnmatch(name, k) for name, _ in trainable)]
    if unmatched:
        raise RecipeError(source, [f"train.lr_scale.{k} matches no trainable parameter" for k in unmatched])
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in trainable:
        factor = next((v for k, v in patterns.items() if fnmatch(name, k)), 1.0)
        decay = weight_decay if scope == "all" or param.ndim >= 2 else 0.0
        groups.setdefault((factor, decay), []).append(param)
    # the unscaled groups first: the loop logs param_groups[0]'s rate as the run's lr
    order = sorted(groups, key=lambda key: (key[0] != 1.0, -key[1]))
    param_groups = [{"params": groups[k], "lr": lr * k[0], "weight_decay": k[1]} for k in order]
    return torch.optim.AdamW(param_groups, lr=lr, fused=_fusable([p for _, p in trainable]) or None)


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters. On a CPU torch's default AdamW is a Python loop
    over the tensors (its ``foreach`` form is the default on GPUs only): the fused kernel steps the main job's
    3.5 M parameters 2.6x faster (``benchmarks/stage1.py``, "optimizer step"), equal to float rounding."""
    return all(p.device.type in ("cpu", "cuda") and torch.is_floating_point(p) for p in params)


# the segments Fabric, DDP, FSDP and torch.compile put into parameter names; recipes name the model's own
WRAPPER_SEGMENTS = ("_forward_module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped model (as ``train.trainable`` and ``train.lr_scale`` name it)."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name.removeprefix("module.")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, start_ratio: float = 0.0) -> float:
    """Linear warm-up from ``start_ratio`` to 1 (step + 1 of ``warmup``), then cosine down to ``min_ratio`` at
    ``total`` steps (``train.lr_schedule: cosine``)."""
    if step < warmup:
        return start_ratio + (1.0 - start_ratio) * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return _cosine(progress, min_ratio)


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _warmup(step: int, warmup: int, start_ratio: float) -> float:
    """LAVIS's warm-up: ``start + (peak - start) * step / warmup``, capped at the peak."""
    return min(1.0, start_ratio + (1.0 - start_ratio) * step / max(warmup, 1))


def epoch_lr_factor(
    step: int, warmup: int, batches_per_epoch: int, grad_accum: int, total: int, min_ratio: float, start_ratio: float
) -> float:
    """``cosine-per-epoch`` (LAVIS LinearWarmupCosineLRScheduler, 3D-MoLM stages 1-2): warm-up in epoch 0 only
    (at most one epoch of it, as the reference caps it), then cosine by epoch / epochs from epoch 1 on."""
    epoch = step * grad_accum // batches_per_epoch
    if epoch == 0:
        return _warmup(step, min(warmup, batches_per_epoch), start_ratio)
    epochs = math.ceil(total * grad_accum / batches_per_epoch)
    return _cosine(epoch / epochs, min_ratio)


def from_start_lr_factor(step: int, warmup: int, total: int, min_ratio: float, start_ratio: float) -> float:
    """``cosine-from-start`` (3D-MoLM stage 3): warm-up to step ``warmup`` inclusive, then cosine by step / total
    (the warm-up steps counted in the cosine's progress)."""
    if step <= warmup:
        return _warmup(step, warmup, start_ratio)
    return _cosine(step / total, min_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: DictConfig, batches_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule ``train.lr_schedule`` names; ``batches_per_epoch`` (micro-batches of one
    process) places the epoch boundaries of ``cosine-per-epoch``."""
    min_ratio = train.min_lr / train.lr if train.lr else 0.0
    start_ratio = train.get("warmup_start_lr", 0.0) / train.lr if train.lr else 0.0
    warmup, total = train.warmup_steps, train.max_steps
    schedule = train.get("lr_schedule", "cosine")
    factor: Callable[[int], float]
    if schedule == "cosine-per-epoch":
        factor = partial(
            epoch_lr_factor,
            warmup=warmup,
            total=total,
            batches_per_epoch=max(1, batches_per_epoch),
            grad_accum=train.grad_accum,
            min_ratio=min_ratio,
            start_ratio=start_ratio,
        )
    elif schedule == "cosine-from-start":
        factor = partial(from_start_lr_factor, warmup=warmup, total=total, min_ratio=min_ratio, start_ratio=start_ratio)
    else:
        factor = partial(lr_factor, warmup=warmup, total=total, min_ratio=min_ratio, start_ratio=start_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_determinism(deterministic: bool) -> None:
    """``train.deterministic``: deterministic kernels (needed for bit-exact resume)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


# --- interruption -------------------------------------------------------------------------------------


class _StopSignals:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary; a second signal aborts."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self.previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    def _handle(self, signum, frame) -> None:
        if self.loop.stop_requested:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: aborting")
        if self.loop.fabric.is_global_zero:
            log.warning(
                "%s received: saving a checkpoint at the end of this step (again to abort)",
                signal.Signals(signum).name,
            )
        self.loop.request_stop()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --- the loop -----------------------------------------------------------------------------------------


@dataclass
class FitResult:
    status: str  # "completed" | "interrupted"
    step: int
    best: dict[str, Any] | None  # {"metric", "value", "step"}
    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)  # validation metrics by evaluation


class Loop:
    """State of one ``fit`` call; callbacks receive it."""

    def __init__(
        self,
        fabric: Fabric,
        task: Task,
        recipe: DictConfig,
        output_dir: Path,
        callbacks: Sequence[Callback],
        log_metrics: Callable[[Mapping[str, float], int], None] | None,
    ):
        self.fabric, self.task, self.recipe, self.train = fabric, task, recipe, recipe.train
        self.ckpt_root = Path(output_dir) / checkpoint.CHECKPOINTS
        self.callbacks, self.log_metrics = list(callbacks), log_metrics
        self.stop_requested = False
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.init_report: dict[str, Any] | None = None  # what train.init_from loaded
        self.trust_pickle = False
        self._step_checked = False
        self.frozen_modules: list[nn.Module] = []
        self.history: list[dict[str, float]] = []

    def request_stop(self) -> None:
        self.stop_requested = True

    # -- setup -----------------------------------------------------------------------------------------
    def setup(
        self, model: nn.Module, resume_from: Path | None, init_from: Path | None = None, trust_pickle: bool = False
    ) -> None:
        """``init_from``: a state file to start from (resolved by the runner from ``train.init_from``)."""
        fabric, train = self.fabric, self.train
        self.trust_pickle = trust_pickle
        if init_from is not None and resume_from is None:  # resuming restores this run's own weights instead
            self.init_report = checkpoint.init_weights(model, init_from)
            if fabric.is_global_zero:
                log.info(
                    "initialised %d tensors from %s; new: %s",
                    self.init_report["loaded"],
                    self.init_report["source"],
                    ", ".join(self.init_report["new"]) or "none",
                )
        n_train, n_total = apply_freezing(model, train.trainable, train.frozen, self.recipe.recipe)
        if fabric.is_global_zero:
            log.info(
                "parameters: %s trainable of %s (%.2f%%)",
                f"{n_train:,}",
                f"{n_total:,}",
                100.0 * n_train / max(1, n_total),
            )
        self.frozen_modules = frozen_modules(model)
        self.model = fabric.setup_module(model)
        if resume_from is not None:
            # the run's own weights before the task builds its data: a frozen encoder's outputs are cached then
            # (before the full restore below, which needs the loader), and would otherwise be the freshly built
            # encoder's for the rest of the run
            checkpoint.load_model(fabric, resume_from, self.model)
        scope = train.get("weight_decay_scope", "matrices")
        optimizer = build_optimizer(
            self.model, train.lr, train.weight_decay, self.recipe.recipe, scope, train.get("lr_scale")
        )
        fabric_optimizer = fabric.setup_optimizers(optimizer)
        # one optimizer in, one out; Fabric's wrapper takes on the optimizer's class, so it is an Optimizer too
        assert isinstance(fabric_optimizer, torch.optim.Optimizer)
        self.optimizer = fabric_optimizer
        splits = self.task.datasets()
        if "train" not in splits:
            raise MolbridgeError(f"task '{self.recipe.task.name}' has no 'train' split (it has: {', '.join(splits)})")
        self.has_valid = "valid" in splits
        self.train_dataset = splits["train"]
        self.loader, self.sampler = _train_loader(fabric, self.task, self.train_dataset, self.recipe)
        batches_per_epoch = self.sampler.per_rank() // self.recipe.data.batch_size  # drop_last, as the loader
        self.scheduler = build_scheduler(self.optimizer, train, batches_per_epoch)
        if resume_from is not None:
            self._restore(resume_from)

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "sampler": self.sampler,
            "step": self.step,
            "best": self.best,
        }

    def _restore(self, folder: Path) -> None:
        state = self._state()
        checkpoint.load(self.fabric, folder, state, trust_pickle=self.trust_pickle)
        self.step, self.best, self.last_checkpoint = state["step"], state["best"], folder
        if self.fabric.is_global_zero:
            log.info("resumed from %s (step %d)", folder, self.step)

    def save(self) -> Path:
        """Checkpoint the current step (all ranks) and prune old periodic checkpoints."""
        self.last_checkpoint = checkpoint.save(self.fabric, self.ckpt_root, self.step, self._state(), self.recipe)
        if self.fabric.is_global_zero:
            checkpoint.prune(self.ckpt_root, self.train.keep_checkpoints)
        self.fabric.barrier()
        return self.last_checkpoint

    # -- batches ---------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Any]:
        """Training batches forever: epochs roll over, the sampler's position follows consumption."""
        while True:
            self._set_epoch(self.sampler.epoch)
            for batch in self.loader:
                self.sampler.advance(self.recipe.data.batch_size)
                yield batch
            self.sampler.next_epoch()

    def _set_epoch(self, epoch: int) -> None:
        """Datasets with per-epoch randomness (e.g. a conformer draw) expose ``set_epoch``."""
        dataset = self.train_dataset
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    # -- one optimizer step ----------------------------------------------------------------------------
    def _micro_step(self, batch: Any, last: bool) -> dict[str, torch.Tensor]:
        with self.fabric.no_backward_sync(self.model, enabled=not last):
            with self.fabric.autocast():  # also covers tasks that call submodules, not only forward()
                out = self.task.training_step(self.model, batch)
            if not self._step_checked:
                self._check_step_output(out)
            self.fabric.backward(out.loss / self.train.grad_accum)
        return {"loss": out.loss.detach()} | {k: torch.as_tensor(v).detach() for k, v in out.logs.items()}

    def _check_step_output(self, out: Any) -> None:
        """The task contract on the first micro-step: a StepOutput whose loss is a scalar tensor with a graph."""
        name = f"task '{self.recipe.task.name}'"
        if not isinstance(out, StepOutput):
            raise ContractError(f"{name}: training_step must return StepOutput, got {type(out).__name__}")
        loss = out.loss
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ContractError(f"{name}: training_step's loss must be a 0-dim tensor, got {shape}")
        if not loss.requires_grad:
            raise ContractError(f"{name}: training_step's loss has no gradient (computed under no_grad or detached?)")
        self._step_checked = True

    def _agree(self, flag: bool) -> bool:
        """True if ``flag`` is set on any rank (all ranks take the same branch)."""
        if self.fabric.world_size == 1:
            return flag
        flags = torch.tensor(float(flag), device=self.fabric.device)
        total = self.fabric.all_reduce(flags, reduce_op="sum")
        assert isinstance(total, torch.Tensor)  # a tensor in, a tensor out
        return bool(total > 0)

    def _non_finite(self, step_logs: list[dict[str, torch.Tensor]], batches: list[Any]) -> NonFiniteLossError:
        bad = sorted({k for logs in step_logs for k, v in logs.items() if not torch.isfinite(v).all()})
        mol_ids = [m for b in batches if isinstance(b, Mapping) for m in (b.get(keys.MOL_ID) or [])]
        where = str(self.last_checkpoint) if self.last_checkpoint else "none (no checkpoint was saved yet)"
        return NonFiniteLossError(
            f"non-finite loss at step {self.step + 1} (rank {self.fabric.global_rank}); non-finite terms: "
            f"{', '.join(bad) or 'on another rank'}; "
            f"molecules in the batch: {', '.join(map(str, mol_ids)) or 'n/a'}; "
            f"last good checkpoint (kept): {where}"
        )

    def train_mode(self) -> None:
        """Train mode, except for modules whose parameters are all frozen: they run as in evaluation (no dropout),
        as BLIP-2 and 3D-MoLM run their frozen encoder and LLM."""
        self.model.train()
        for module in self.frozen_modules:
            module.eval()

    def train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        self.train_mode()
        step_logs, seen = [], []
        for i in range(self.train.grad_accum):
            batch = next(batches)
            seen.append(batch)
            step_logs.append(self._micro_step(batch, last=i == self.train.grad_accum - 1))
        local_bad = any(not torch.isfinite(logs["loss"]).all() for logs in step_logs)
        if self._agree(local_bad):  # before the optimizer touches the weights: the model stays good
            raise self._non_finite(step_logs, seen)
        scalars = {
            k: float(torch.stack([torch.as_tensor(lg[k], dtype=torch.float32) for lg in step_logs]).mean())
            for k in step_logs[0]
        }
        if self.train.grad_clip:
            norm = self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.train.grad_clip)
            assert norm is not None  # with max_norm Fabric returns the norm
            scalars["grad_norm"] = float(norm)
        scalars["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return scalars

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation metrics (``valid/NAME``); updates the best and saves a checkpoint when it improves."""
        with self.fabric.autocast():
            metrics = self.task.evaluate(self.model, self.fabric, "valid")
        # rank 0's numbers decide, so every rank takes the same best/save branch
        metrics = self.fabric.broadcast(dict(metrics), src=0)
        self.train_mode()
        name, mode = self.task.monitor
        if name not in metrics:
            raise MolbridgeError(
                f"task '{self.recipe.task.name}' monitors '{name}' but evaluate() returned only: "
                f"{', '.join(metrics) or 'nothing'}"
            )
        value = float(metrics[name])
        named = {f"valid/{k}": float(v) for k, v in metrics.items()}
        self.history.append({"step": self.step, **named})
        better = self.best is None or (value > self.best["value"] if mode == "max" else value < self.best["value"])
        if better and math.isfinite(value):
            self.best = {"metric": f"valid/{name}", "value": value, "step": self.step}
            self.save()
            if self.fabric.is_global_zero:
                checkpoint.write_best(self.ckpt_root, self.step, self.best["metric"], value)
        return named

    def _log(self, scalars: Mapping[str, float]) -> None:
        if self.fabric.world_size > 1:  # mean over ranks, only at logging steps
            names = sorted(scalars)
            values = torch.tensor([scalars[n] for n in names], device=self.fabric.device)
            reduced = self.fabric.all_reduce(values, reduce_op="mean")
            assert isinstance(reduced, torch.Tensor)  # a tensor in, a tensor out
            values = reduced
            scalars = dict(zip(names, values.tolist(), strict=True))
        if self.fabric.is_global_zero and self.log_metrics is not None:
            self.log_metrics({f"train/{k}": v for k, v in scalars.items()}, self.step)

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        train = self.train
        batches = self._batches()
        bar = tqdm(
            total=train.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not self.fabric.is_global_zero,
        )
        status = "completed"
        with _StopSignals(self), bar:
            while self.step < train.max_steps:
                scalars = self.train_step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{scalars['loss']:.4g}")
                if train.log_every and self.step % train.log_every == 0:
                    self._log(scalars)
                if self.has_valid and train.eval_every and self.step % train.eval_every == 0:
                    self._log_eval(self.evaluate())
                for callback in self.callbacks:
                    callback.on_step_end(self, self.step, scalars)
                if self._agree(self.stop_requested):
                    status = "interrupted"
                    break
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    self._save_once()
        if status == "completed" and self.has_valid and not (train.eval_every and self.step % train.eval_every == 0):
            self._log_eval(self.evaluate())
        self._save_once()
        return FitResult(status, self.step, self.best, self.last_checkpoint, self.history)

    def _save_once(self) -> None:
        if self.last_checkpoint is None or self.last_checkpoint != checkpoint.step_dir(self.ckpt_root, self.step):
            self.save()

    def _log_eval(self, metrics: Mapping[str, float]) -> None:
        if self.fabric.is_global_zero:
            log.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if self.log_metrics is not None:
                self.log_metrics(metrics, self.step)


def fit(
    fabric: Fabric,
    task: Task,
    model: nn.Module,
    recipe: DictConfig,
    output_dir: Path,
    *,
    resume_from: Path | None = None,
    init_from: Path | None = None,
    trust_pickle: bool = False,
    callbacks: Sequence[Callback] = (),
    log_metrics: Callable[[Mapping[str, float], int], None] | None = None,
) -> tuple[FitResult, Loop]:
    """Train ``model`` for ``task`` as ``recipe.train`` says; returns the result and the loop (its model).

    Checkpoints go to ``output_dir/checkpoints``; ``resume_from`` is a checkpoint folder to continue
    from. ``log_metrics(metrics, step)`` receives ``train/...`` and ``valid/...`` scalars on rank 0.
    ``task.training_step`` must run the model through ``model(...)`` (the Fabric-wrapped forward):
    DDP synchronises gradients only for computations that went through it.
    """
    loop = Loop(fabric, task, recipe, output_dir, callbacks, log_metrics)
    loop.setup(model, resume_from, init_from, trust_pickle)
    return loop.run(), loop
