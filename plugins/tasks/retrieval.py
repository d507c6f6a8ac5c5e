"""The ``retrieval`` task: stage-1 training and molecule-text retrieval evaluation (3D-MoLM protocol).

Training: contrastive + matching + Q-Former captioning losses (:mod:`.stage1`). Evaluation, on conformer
0 and the dataset order (deterministic): molecule->text and text->molecule accuracy and Recall@20 in
batches of 64 and against the whole split, optionally re-ranked by the matching head over the top-k.
The same protocol scores a baseline that has seen no 3D and trained no text model: a ridge map from
Morgan fingerprints to the frozen (initial) text tower's embeddings, fitted on the training split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from molbridge.core import batch as keys
from molbridge.core import distributed, hookimpl
from molbridge.core.cache import FeatureCache, tokenizer_fingerprint, weights_digest
from molbridge.core.cache import digest as cache_digest
from molbridge.core.contracts import Components, StepOutput, Task
from molbridge.core.data import MoleculeDataset
from molbridge.core.data.batching import by_size
from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import bounded
from molbridge.plugins.tasks import truncation
from molbridge.plugins.tasks.fingerprint_baseline import FingerprintRidge
from molbridge.plugins.tasks.retrieval_metrics import full_set_ranks, retrieval_report
from molbridge.plugins.tasks.stage1 import CACHED_TEXT, Stage1Model, Stage1Options, check_options, text_side_for

SPLITS = ("train", "valid", "test")
TEXT_BATCH = 128  # texts per batch through the locked text tower


@dataclass
class RetrievalConfig(Stage1Options):
    name: str = "retrieval"
    text_field: str = "description"
    """Which stored text of a molecule is its caption."""
    eval_text_field: str | None = None
    """The text of the validation and test molecules; null: ``text_field`` (3D-MoLM's pretraining phase
    trains on ``enriched_description`` and evaluates on ``description``)."""
    inbatch_size: int = bounded(64, ge=1)
    """Candidates per batch for the in-batch protocol (3D-MoLM: 64)."""
    inbatch_order: str = field(default="dataset", metadata={"choices": ("dataset", "shuffled")})
    """How the evaluation split is cut into in-batch batches: ``dataset`` order, or ``shuffled`` by a
    permutation seeded by the recipe's seed (3D-MoLM shuffles its test set once). Full-set metrics ignore it."""
    rerank_top_k: int = bounded(0, ge=0)
    """Re-rank the top k candidates by similarity + matching score (3D-MoLM: 64; 0 = off, it is slow on CPU)."""
    rerank_score: str = field(default="logit-margin", metadata={"choices": ("logit-margin", "positive-logit")})
    """The matching score added to the similarity: ``logit-margin`` (match logit minus no-match logit, the
    log-odds) or ``positive-logit`` (the match logit alone, 3D-MoLM's ``compute_gtm``)."""
    baseline: bool = True
    """Score the Morgan-fingerprint ridge baseline in the same run."""


class RetrievalTask(Task):
    monitor = ("full_acc", "max")
    report_metrics = ("test/full_m2t_acc", "test/full_t2m_acc")
    dataset_class = MoleculeDataset  # what reads a split (a subclass may caption items otherwise)

    def __init__(self, config: RetrievalConfig, recipe, registry=None):
        self.config, self.recipe = config, recipe
        check_options(config, recipe.data.batch_size, "task section")
        self._splits: dict[str, MoleculeDataset] | None = None
        self.encoder = self.projector = self.text_side = None
        self._baseline: dict[str, tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]] = {}
        self._last_ranks: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def splits(self) -> dict[str, MoleculeDataset]:
        """The train/valid/test datasets, read on first use (building the task reads no data)."""
        if self._splits is None:
            data = self.recipe.data
            self._splits = {
                split: self.dataset_class.from_split(
                    data.name,
                    split,
                    data.split,
                    seed=self.recipe.seed,
                    augment=data.augment and split == "train",
                    limit=data.limit if split == "train" else data.eval_limit,
                    text_field=self.text_field(split),
                )
                for split in SPLITS
            }
        return self._splits

    def text_field(self, split: str) -> str:
        """The stored text that is a molecule's caption in ``split``."""
        evaluation = self.config.eval_text_field
        return evaluation if split != "train" and evaluation else self.config.text_field

    # -- model ----------------------------------------------------------------------------------------
    def build_model(self, components: Components) -> Stage1Model:
        if components.encoder is None or components.projector is None:
            raise MolbridgeError("retrieval needs an encoder and a projector section in the recipe")
        self.encoder, self.projector = components.encoder, components.projector
        model = self.assemble(self.config, self.encoder, self.projector, None)
        self.text_side = model.text
        self.truncation = self._truncation()
        if self.config.captioning_head_init == "pretrained" and self.config.captioning_weight:
            load_head = getattr(self.text_side, "load_pretrained_lm_head", None)
            if load_head is None:
                raise MolbridgeError(
                    "task.captioning_head_init=pretrained: the text side of projector "
                    f"'{self.recipe.projector.name}' cannot load a pretrained MLM head"
                )
            load_head()
        if self.config.baseline or self.config.lock_text_tower:
            self._encode_texts()  # before training: the text tower is still the pretrained one
        if self.config.baseline:
            self._fit_baseline()
        return model

    @classmethod
    def assemble(cls, config, encoder, projector, llm) -> Stage1Model:
        """Encoder + projector + text side with the stage-1 losses; heads whose loss is off (and a locked
        tower) frozen."""
        return Stage1Model(encoder, projector, text_side_for(projector, config), config)

    def datasets(self):
        return self.splits

    def collate(self, samples):
        features = [self.encoder.featurize_item(s) for s in samples]
        batch = {keys.ENCODER_INPUT: self.encoder.collate(features), keys.MOL_ID: [s[keys.MOL_ID] for s in samples]}
        if self.config.lock_text_tower:  # its states are cached: no tokens (tokenising was most of a batch's loading)
            batch[CACHED_TEXT] = torch.stack([self._pooled_text[self.text_key(s)] for s in samples])
        else:
            batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK] = self.text_side.tokenize(
                [s[keys.TEXT] for s in samples]
            )
        return batch

    def training_step(self, model, batch) -> StepOutput:
        terms = model(batch)
        return StepOutput(terms.pop("loss"), {name: value.detach() for name, value in terms.items()})

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, fabric, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Molecule (N, P, E) and text (N, E) features of a split, in dataset order, float32 on CPU."""
        dataset = self.splits[split]
        return self.encode(fabric, dataset.sizes(), dataset.__getitem__, f"encode {split}")

    @torch.no_grad()
    def encode(self, fabric, sizes, sample, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Molecule (N, P, E) and text (N, E) features of the samples ``sample(0..N-1)`` (``sizes``: their atom
        counts), in that order, float32 on CPU.

        Samples are encoded in batches of similar size (less padding; the features are put back in order, so the
        in-batch protocol is untouched). Under DDP each rank encodes its share of the batches
        (:mod:`molbridge.core.distributed`); every rank gets all features, identical to a single process's."""
        text_side = self.text_side
        batches = by_size(sizes, self.recipe.data.eval_batch_size)
        mine = []
        for rows in tqdm(distributed.shard(batches), desc=desc, leave=False, disable=not fabric.is_global_zero):
            batch = fabric.to_device(self.collate([sample(i) for i in rows]))
            encoded = self.encoder(batch[keys.ENCODER_INPUT])
            mol = text_side.molecule_features(encoded).float().cpu()
            text = (
                text_side.project_text(batch[CACHED_TEXT])
                if CACHED_TEXT in batch
                else text_side.text_features(batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK])
            )
            mine.append((mol, text.float().cpu()))
        parts = distributed.gather(mine)
        order = torch.tensor([i for rows in batches for i in rows]).argsort()  # back to the samples' order
        return torch.cat([m for m, _ in parts])[order], torch.cat([t for _, t in parts])[order]

    def inbatch_order(self, n: int) -> torch.Tensor | None:
        """The order the in-batch protocol cuts the split in: None (dataset order) or a seeded permutation."""
        if self.config.inbatch_order != "shuffled":
            return None
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.recipe.seed))

    def _report(self, mol: torch.Tensor, text: torch.Tensor, pair_scores=None) -> dict[str, float]:
        """retrieval_report in the recipe's in-batch order; ``pair_scores`` still receives dataset indices."""
        order = self.inbatch_order(len(mol))
        if order is not None:
            mol, text = mol[order], text[order]
            if pair_scores is not None:
                pair_scores = _reindexed(pair_scores, order)
        return retrieval_report(
            mol, text, batch_size=self.config.inbatch_size, pair_scores=pair_scores, rerank_k=self.config.rerank_top_k
        )

    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        model.eval()
        mol, text = self.features(fabric, split)
        pair_scores = self._pair_scorer(fabric, split) if self.config.rerank_top_k else None
        metrics = _with_full_acc(self._report(mol, text, pair_scores))
        self._last_ranks = (split, full_set_ranks(mol, text))  # for write_outputs; cheap next to encoding
        if self.config.baseline:
            metrics |= {f"baseline_{k}": v for k, v in self._baseline_metrics(split).items()}
        model.train()
        return metrics

    def _pair_scorer(self, fabric, split: str):
        """Matching score of (molecule i, text j) pairs, in batches: match minus no-match logit, or the match
        logit alone (``rerank_score``)."""
        dataset, batch_size = self.splits[split], self.recipe.data.eval_batch_size

        def score(mol_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
            out = []
            for start in range(0, len(mol_index), batch_size):
                mols = [dataset[int(i)] for i in mol_index[start : start + batch_size]]
                texts = [dataset[int(j)] for j in text_index[start : start + batch_size]]
                batch = self.collate(mols)
                ids, mask = self.text_side.tokenize([t[keys.TEXT] for t in texts])
                batch = fabric.to_device(batch | {keys.TEXT_INPUT_IDS: ids, keys.TEXT_ATTENTION_MASK: mask})
                encoded = self.encoder(batch[keys.ENCODER_INPUT])
                logits = self.text_side.match_logits(
                    encoded, batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK]
                ).float()
                out.append(matching_score(logits, self.config.rerank_score).cpu())
            return torch.cat(out)

        return score

    # -- the frozen text tower: baseline targets and the locked tower's cache --------------------------
    @torch.no_grad()
    def _encode_texts(self) -> None:
        """Pooled states of every text under the text tower as loaded, by molecule id (CPU, float32).

        With ``data.cache`` they come from the content-addressed cache when an earlier run (any seed, any sweep
        child) of the same tower already computed them; the texts missing from it are encoded in batches of
        similar length and added."""
        by_id = self.texts_by_key()
        cache = self._text_cache() if self.recipe.data.cache else None
        # similar lengths together (little padding), ties by text: the same batches in every process
        texts = sorted(set(by_id.values()), key=lambda t: (len(t), t))
        if cache is None:
            pooled = dict(zip(texts, self._pool(texts, progress=True), strict=True))
            computed = len(texts)
        else:  # every value read back from the cache: a cold and a warm run use identical states
            keys_of = {text: cache_digest(text) for text in texts}
            computed = cache.fill(
                {keys_of[text]: text for text in texts},
                lambda chunk: [{"pooled": value} for value in self._pool(chunk)],
                chunk=2 * TEXT_BATCH,
                desc="text tower: encode texts",
            )
            found = cache.get(keys_of.values())
            pooled = {text: found[key]["pooled"] for text, key in keys_of.items()}
        self.text_cache_report = {"texts": len(texts), "computed": computed, "cached": cache is not None}
        self._pooled_text = {mol_id: pooled[text] for mol_id, text in by_id.items()}

    def texts_by_key(self) -> dict[str, str]:
        """Every text of the splits under its key (:meth:`text_key`): a molecule's stored caption by its id."""
        return {
            mol.id: mol.texts.get(self.text_field(split), "")
            for split in SPLITS
            for mol in (self.splits[split].store[int(row)] for row in self.splits[split].indices)
        }

    def text_key(self, sample: dict[str, Any]) -> str:
        """What finds a sample's text among :meth:`texts_by_key`."""
        return sample[keys.MOL_ID]

    def _text_cache(self) -> FeatureCache | None:
        """The cache of this text tower's pooled states: its weights, tokenizer, length limit and pooling."""
        side = self.text_side
        tokenizer = getattr(side, "tokenizer", None)
        if tokenizer is None:  # a text side that does not expose its tokenizer: not cached (nothing to key on)
            return None
        namespace = cache_digest(
            "text-tower-pooled",
            weights_digest(side.text_tower_parameters()),
            tokenizer_fingerprint(tokenizer),
            side.max_text_length,
            side.text_pooling,
        )
        return FeatureCache(
            namespace,
            {"what": "pooled text-tower states", "pooling": side.text_pooling, "max_text_length": side.max_text_length},
        )

    @torch.no_grad()
    def _pool(self, texts: list[str], progress: bool = False) -> list[torch.Tensor]:
        """The text tower's pooled state of each text (CPU, float32), in batches of ``TEXT_BATCH``."""
        text_side = self.text_side
        device = next(text_side.parameters()).device  # built under fabric.init_module: maybe a GPU
        text_side.eval()
        pooled: list[torch.Tensor] = []
        starts = range(0, len(texts), TEXT_BATCH)
        for start in tqdm(starts, desc="text tower: encode texts", leave=False, disable=not progress):
            ids, mask = text_side.tokenize(texts[start : start + TEXT_BATCH])
            pooled.extend(text_side.pooled_text(ids.to(device), mask.to(device)).float().cpu())
        text_side.train()
        return pooled

    def _truncation(self) -> dict[str, Any]:
        """How many texts of the dataset the text tower's length limit cuts (reported with the run)."""
        field = self.config.text_field
        texts = [
            self.splits[split].store[int(row)].texts.get(field, "")
            for split in SPLITS
            for row in self.splits[split].indices
        ]
        key = "projector.max_text_length" if self.text_side is self.projector else "task.text_tower.max_text_length"
        return truncation.report(
            self.text_side.token_counts(texts),
            self.text_side.max_text_length,
            f"'{field}' texts for the text tower ({key})",
        )

    def _frozen_targets(self, split: str) -> torch.Tensor:
        dataset = self.splits[split]
        return F.normalize(torch.stack([self._pooled_text[dataset.store[int(r)].id] for r in dataset.indices]), dim=-1)

    def _smiles(self, split: str) -> list[str]:
        dataset = self.splits[split]
        return [dataset.store[int(row)].smiles for row in dataset.indices]

    def _fit_baseline(self) -> None:
        """Fit the fingerprint ridge, or with ``data.cache`` read the fit an earlier run (any seed, any sweep child
        with this text tower) made from the same molecules and targets: the key is their digest."""
        self.baseline = FingerprintRidge()
        data = [part for split in ("train", "valid") for part in (self._smiles(split), self._frozen_targets(split))]
        if not self.recipe.data.cache:
            self.baseline.fit(*data)
            self.baseline_fit = "computed"
            return
        settings = self.baseline.settings()
        fits = FeatureCache(cache_digest("fingerprint-ridge", settings), {"what": "fingerprint ridge fits", **settings})
        key = cache_digest(*data)  # fill: sweep children starting together fit it once, the others wait and read
        computed = fits.fill({key: data}, lambda todo: [self.baseline.fit(*todo[0]).state()], chunk=1, progress=False)
        self.baseline.load_state(fits.get([key])[key])
        self.baseline_fit = "computed" if computed else "read from the cache"

    def _baseline_metrics(self, split: str) -> dict[str, float]:
        if split not in self._baseline:
            predicted, targets = self.baseline.molecule_features(self._smiles(split)), self._frozen_targets(split)
            report = self._report(predicted, targets)
            self._baseline[split] = (_with_full_acc(report), full_set_ranks(predicted, targets))
        return self._baseline[split][0]

    def write_outputs(self, folder: Path) -> list[Path]:
        """``ranks-<split>.json``: every molecule's full-set rank in both directions (0 = first) under the model
        and the fingerprint baseline, from the last evaluation, so Recall@k can be drawn for any k later.

        Ranks are by similarity, before any re-ranking; lists are in dataset order, aligned with ``ids``."""
        if self._last_ranks is None:
            return []
        split, ranks = self._last_ranks
        dataset = self.splits[split]
        content = {
            "split": split,
            "rank": "0 = retrieved first; ties: see retrieval_metrics",
            "ids": [dataset.store[int(row)].id for row in dataset.indices],
            "model": _directions(ranks),
        }
        if split in self._baseline:
            content["baseline"] = _directions(self._baseline[split][1])
        path = Path(folder) / f"ranks-{split}.json"
        path.write_text(json.dumps(content, separators=(",", ":")) + "\n")  # compact: a few ints per molecule
        return [path]

    def describe(self) -> dict[str, Any]:
        facts = {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "text_field": self.config.text_field,
            "protocol": f"M2T/T2M accuracy and R@20, in batches of {self.config.inbatch_size} "
            f"({self.config.inbatch_order} order) and against the full split; conformer 0"
            + (
                f"; top {self.config.rerank_top_k} re-ranked by similarity + {self.config.rerank_score}"
                if self.config.rerank_top_k
                else ""
            ),
            "truncation": getattr(self, "truncation", None),
            "text_cache": getattr(self, "text_cache_report", None),
            "text_side": (
                f"the projector's own ({self.recipe.projector.name})"
                if self.text_side is self.projector
                else "the task's text tower (task.text_tower) reading the projector's soft tokens as a prefix"
            ),
        }
        if self.config.baseline:
            facts["baseline"] = self.baseline.describe() | {
                "text_embeddings": f"{self.text_side.text_pooling}-pooled states of the text tower as loaded, "
                "before training",
                "fit": self.baseline_fit,
            }
        return facts


def matching_score(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,) re-ranking score from (B, 2) no-match/match logits: ``logit-margin`` (match minus no-match, the
    log-odds) or ``positive-logit`` (the match logit alone, as 3D-MoLM's compute_gtm)."""
    return logits[:, 1] - logits[:, 0] if kind == "logit-margin" else logits[:, 1]


def _reindexed(pair_scores, order: torch.Tensor):
    """``pair_scores`` over positions of the permuted split, looked up by the molecules' dataset indices."""
    return lambda mol_index, text_index: pair_scores(order[mol_index], order[text_index])


def _directions(ranks: tuple[torch.Tensor, torch.Tensor]) -> dict[str, list[int]]:
    m2t, t2m = ranks
    return {"m2t": m2t.tolist(), "t2m": t2m.tolist()}


def _with_full_acc(report: dict[str, float]) -> dict[str, float]:
    """Adds ``full_acc``, the mean of full-set M2T and T2M accuracy (the monitored metric)."""
    return report | {"full_acc": (report["full_m2t_acc"] + report["full_t2m_acc"]) / 2}


@hookimpl
def molbridge_register_tasks(register):
    register(
        "retrieval",
        RetrievalTask,
        RetrievalConfig,
        description="stage 1: molecule-text contrastive/matching/captioning; retrieval accuracy and R@20",
    )
