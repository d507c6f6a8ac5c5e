"""Content-addressed caches of what frozen parts compute: a text tower's text states, a frozen encoder's outputs,
a fixed baseline's fit.

A cache **namespace** is the digest of everything that computes the values (the weights, the settings that shape
the output); an **entry** is the digest of its inputs (a text, a conformer's atoms and coordinates). A changed
weight, text or conformer is another key, so a stale value can never be read: invalidation is by key only.
Values are tensors in safetensors files (memory-mapped when read, no pickle), under
``$MOLBRIDGE_CACHE/features/<namespace>/``, shared by runs, seeds and sweep children.

Writers never modify a file: each writes a new ``part-<random>.safetensors`` and renames it into place, so any
number of processes may fill a namespace at once (two computing the same entry store the same value twice,
harmlessly). Readers index the parts they find. The whole cache is kept under ``MOLBRIDGE_CACHE_MAX_GB`` (default
20): when a write exceeds it, the namespaces used least recently are removed. ``bench cache info|clear``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from molbridge.core.contracts import Encoder

ENV_MAX_GB = "MOLBRIDGE_CACHE_MAX_GB"
META_FILE = "meta.json"
SEPARATOR = "/"  # between an entry's key and a field in a tensor's name: "<key>/atoms"


def root() -> Path:
    """``$MOLBRIDGE_CACHE/features`` (default ``~/.cache/molbridge/features``)."""
    return Path(os.environ.get("MOLBRIDGE_CACHE", Path.home() / ".cache" / "molbridge")) / "features"


def digest(*parts: Any) -> str:
    """SHA-256 of the parts (bytes as they are, tensors and arrays by dtype, shape and bytes, the rest as JSON)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes | bytearray):
            h.update(part)
        elif isinstance(part, torch.Tensor):
            tensor = part.detach().cpu().contiguous()
            h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif hasattr(part, "tobytes") and hasattr(part, "dtype"):  # numpy
            h.update(f"{part.dtype}{part.shape}".encode() + part.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def weights_digest(module: nn.Module | Iterable[tuple[str, torch.Tensor]]) -> str:
    """Digest of a module's state (every parameter and buffer, by name), or of (name, tensor) pairs."""
    items = module.state_dict().items() if isinstance(module, nn.Module) else module
    return digest(*(part for name, tensor in sorted(items, key=lambda kv: kv[0]) for part in (name, tensor)))


class FeatureCache:
    """One namespace: ``get`` what is there, ``put`` what was computed. Entries are ``{field: tensor}``."""

    def __init__(self, namespace: str, description: Mapping[str, Any] | None = None, base: Path | None = None):
        self.folder = (base or root()) / namespace
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / META_FILE
        if description is not None and not meta.is_file():
            _atomic_write(meta, json.dumps(dict(description), indent=2, default=str).encode())
        os.utime(self.folder)  # "used": the size cap removes namespaces used least recently first
        self._index: dict[str, tuple[Path, list[str]]] = {}  # key -> (its part, its tensors' names)
        self._seen: set[Path] = set()
        self._handles: dict[Path, Any] = {}  # parts kept open: reading a batch must not reopen and rescan a file

    def __getstate__(self) -> dict[str, Any]:  # data workers under spawn: open handles do not pickle
        return self.__dict__ | {"_handles": {}}

    def _handle(self, part: Path) -> Any:
        from safetensors import safe_open

        if part not in self._handles:
            self._handles[part] = safe_open(str(part), framework="pt")
        return self._handles[part]

    def _refresh(self) -> None:
        from safetensors import safe_open

        for part in sorted(self.folder.glob("part-*.safetensors")):
            if part in self._seen:
                continue
            names: dict[str, list[str]] = {}
            with safe_open(str(part), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    names.setdefault(name.split(SEPARATOR, 1)[0], []).append(name)
            for key, fields in names.items():
                self._index.setdefault(key, (part, fields))  # two writers of one key stored the same value
            self._seen.add(part)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys with no entry yet (in order, without repeats)."""
        self._refresh()
        return [key for key in dict.fromkeys(keys) if key not in self._index]

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """``{key: {field: tensor}}`` for the keys present (read from the memory-mapped files)."""
        keys = list(keys)
        if any(key not in self._index for key in keys):
            self._refresh()  # another process may have written them since
        found: dict[str, dict[str, torch.Tensor]] = {}
        for key in keys:
            if key in self._index and key not in found:
                part, names = self._index[key]
                handle = self._handle(part)
                found[key] = {name.split(SEPARATOR, 1)[1]: handle.get_tensor(name) for name in names}
        return found

    def fill(
        self,
        inputs: Mapping[str, Any],
        compute: Callable[[list[Any]], list[Mapping[str, torch.Tensor]]],
        chunk: int,
        desc: str = "cache",
        progress: bool = True,
    ) -> int:
        """Compute the entries missing for ``inputs`` (key -> input, in the order to compute them): ``compute`` maps
        a list of inputs to one ``{field: tensor}`` each. Returns how many entries this process computed.

        Processes filling one namespace at once (sweep children starting together) share the work instead of each
        doing all of it: the keys are cut into chunks of ``chunk`` the same way in every process, a chunk is computed
        by whoever holds its claim (a lock file, released by the OS if its holder dies), the others take the next
        unclaimed chunk, then wait on the chunks still claimed and compute whatever their holder left missing."""
        from filelock import FileLock, Timeout
        from tqdm.auto import tqdm

        keys = list(inputs)
        pending = [part for part in (keys[s : s + chunk] for s in range(0, len(keys), chunk)) if self.missing(part)]
        claims = self.folder / "claims"
        claims.mkdir(exist_ok=True)
        computed = 0
        with tqdm(total=len(pending), desc=desc, unit="chunk", disable=not progress or not pending) as bar:
            for timeout in (0, -1):  # first the unclaimed chunks, then wait for the others
                for part in list(pending):
                    try:
                        with FileLock(claims / f"{digest(*part)[:32]}.lock", timeout=timeout):
                            todo = self.missing(part)  # its former holder may have written them meanwhile
                            if todo:
                                self.put(dict(zip(todo, compute([inputs[k] for k in todo]), strict=True)))
                                computed += len(todo)
                    except Timeout:
                        continue
                    pending.remove(part)
                    bar.update()
        return computed

    def put(self, entries: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Write ``entries`` as one new part (atomic), then keep the whole cache under its size cap."""
        from safetensors.torch import save

        if not entries:
            return
        tensors = {
            f"{key}{SEPARATOR}{field}": value.detach().cpu().contiguous()
            for key, fields in entries.items()
            for field, value in fields.items()
        }
        _atomic_write(self.folder / f"part-{uuid.uuid4().hex}.safetensors", save(tensors))
        enforce_cap(keep=self.folder)


def _atomic_write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


# --- what is cached, and clearing it -------------------------------------------------------------------------


def namespaces(base: Path | None = None) -> list[dict[str, Any]]:
    """Every namespace with its size, parts, last use and description, most recently used first."""
    folder = base or root()
    found = []
    for space in folder.iterdir() if folder.is_dir() else []:
        if not space.is_dir():
            continue
        files = [p for p in space.iterdir() if p.is_file()]
        meta = space / META_FILE
        try:
            description = json.loads(meta.read_text()) if meta.is_file() else {}
        except (OSError, ValueError):
            description = {}
        found.append(
            {
                "namespace": space.name,
                "bytes": sum(p.stat().st_size for p in files),
                "parts": sum(p.name.startswith("part-") for p in files),
                "last_used": space.stat().st_mtime,
                "description": description,
            }
        )
    return sorted(found, key=lambda n: -n["last_used"])


def clear(names: Iterable[str] = (), older_than_days: float | None = None, base: Path | None = None) -> list[str]:
    """Remove the named namespaces (all when none is named), or those unused for ``older_than_days``."""
    wanted, now, removed = set(names), time.time(), []
    for space in namespaces(base):
        if wanted and space["namespace"] not in wanted:
            continue
        if older_than_days is not None and now - space["last_used"] < older_than_days * 86400:
            continue
        shutil.rmtree((base or root()) / space["namespace"], ignore_errors=True)
        removed.append(space["namespace"])
    return removed


def enforce_cap(keep: Path | None = None, base: Path | None = None) -> list[str]:
    """Remove least recently used namespaces (never ``keep``) until the cache fits ``MOLBRIDGE_CACHE_MAX_GB``."""
    cap = float(os.environ.get(ENV_MAX_GB, "20")) * 2**30
    spaces = namespaces(base)
    total, removed = sum(s["bytes"] for s in spaces), []
    for space in reversed(spaces):  # least recently used first
        if total <= cap:
            break
        path = (base or root()) / space["namespace"]
        if keep is not None and path.resolve() == Path(keep).resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= space["bytes"]
        removed.append(space["namespace"])
    return removed


# --- what molbridge caches ---------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Digest of a Hugging Face tokenizer's definition (vocabulary, merges, special tokens, normalisation).

    Not the padding and truncation of its serialised form: a fast tokenizer records there the settings of its
    last call, so the same tokenizer would change its fingerprint by being used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return digest(sorted(tokenizer.get_vocab().items()))
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None), definition.pop("padding", None)
    return digest(definition)


def conformer_key(item: Mapping[str, Any]) -> str:
    """The cache key of one molecule item: its atoms, coordinates and SMILES (what any encoder may read)."""
    import numpy as np

    from molbridge.core import batch as keys

    return digest(
        np.asarray(item[keys.ATOMIC_NUMBERS], dtype=np.int64),
        np.asarray(item[keys.POSITIONS], dtype=np.float32),
        item.get(keys.SMILES),
    )


class EncoderCache:
    """The outputs of a frozen encoder, per conformer: computed once (:meth:`fill`), then read (:meth:`encoded`).

    The namespace is the digest of the encoder's weights and its recipe section, so another stage-1 run, preset or
    hydrogen policy never reads these. A molecule's entry is its real rows (the positions its padding mask leaves)
    and its pooled vector, computed in batches of similar size; encoders are padding-invariant (a contract every
    run checks), so a batch assembled from entries equals the encoder's output on that batch (up to float noise).
    """

    def __init__(self, encoder: Encoder, settings: Mapping[str, Any], base: Path | None = None):
        self.encoder = encoder
        namespace = digest("encoder-outputs", weights_digest(encoder), dict(settings))
        self.store = FeatureCache(namespace, {"what": f"encoder outputs ({settings.get('name')})", **settings}, base)

    @torch.no_grad()
    def fill(self, items: list[Mapping[str, Any]], batch_size: int = 64, progress: bool = True) -> int:
        """Encode the items not cached yet (batches of similar size, eval mode); returns how many this process
        computed (processes filling the same cache at once share the work: :meth:`FeatureCache.fill`)."""
        unique = {conformer_key(item): item for item in items}
        # similar sizes together (little padding), ties by key: the same chunks in every process
        order = sorted(unique, key=lambda key: (len(unique[key]["atomic_numbers"]), key))
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            return self.store.fill(
                {key: unique[key] for key in order},
                lambda chunk: [
                    entry for s in range(0, len(chunk), batch_size) for entry in self._encode(chunk[s : s + batch_size])
                ],
                chunk=8 * batch_size,
                desc="frozen encoder: cache outputs",
                progress=progress,
            )
        finally:
            self.encoder.train(was_training)

    def _encode(self, items: list[Mapping[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """One batch through the encoder: each item's real rows and its pooled vector."""
        device = next(self.encoder.parameters()).device
        inputs = self.encoder.collate([self.encoder.featurize_item(item) for item in items])
        out = self.encoder({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        return [
            {"atoms": out.atom_embeddings[i][~out.padding_mask[i]].float(), "pooled": out.pooled[i]}
            for i in range(len(items))
        ]

    def encoded(self, items: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Batch tensors for these items (CPU): ``encoded_atoms`` (B, N, D) zero-padded, ``encoded_padding_mask`` (B, N)
        True at padding, ``encoded_pooled`` (B, D). Every item must have been filled."""
        from molbridge.core import batch as keys
        from molbridge.core.errors import MolbridgeError

        wanted = [conformer_key(item) for item in items]
        found = self.store.get(wanted)
        missing = [item[keys.MOL_ID] for item, key in zip(items, wanted, strict=True) if key not in found]
        if missing:
            raise MolbridgeError(f"frozen-encoder cache has no entry for molecules {missing[:5]}: fill() them first")
        atoms = [found[key]["atoms"] for key in wanted]
        padded = nn.utils.rnn.pad_sequence(atoms, batch_first=True)
        lengths = torch.tensor([len(a) for a in atoms])
        return {
            keys.ENCODED_ATOMS: padded,
            keys.ENCODED_PADDING_MASK: torch.arange(padded.shape[1])[None, :] >= lengths[:, None],
            keys.ENCODED_POOLED: torch.stack([found[key]["pooled"] for key in wanted]),
        }
