"""The prepared dataset on disk: the protocol between ft-data and the trainers.

One HDF5 file holds three flat datasets:

- ``tokens`` (int32): every example's token ids, one after another;
- ``loss_mask`` (uint8): 1 where the loss is computed, aligned with ``tokens``;
- ``offsets`` (int64, n + 1): example ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``;

for a classification dataset also ``labels`` (int64, n): each example's class, an index into
the ``label_names`` attribute (a JSON list, sorted); for preference pairs (``kind`` attribute
``preference``) ``tokens``/``loss_mask``/``offsets`` hold each pair's prompt and chosen answer,
and ``rejected_tokens``/``rejected_loss_mask``/``rejected_offsets`` the same prompt and the
rejected answer, pair ``i`` at index ``i`` of both (the masks cover the answers only);
and attributes: ``format_version``, ``tokenizer_fingerprint`` (sha256 of tokenizer.json),
``template_name``, ``template_sha256``, ``max_length`` (0: no limit), ``source_hash``,
``cache_key``, ``eos_token_id``/``pad_token_id`` (-1: none) and ``stats`` (JSON).

Files are written in chunks to resizable datasets (tokens are never all in memory), into a
temporary file beside the target that is renamed into place once complete: a file under
its final name is always whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
_CHUNK = 1 << 16  # elements per HDF5 chunk: 256 KiB of tokens, a cheap unit to read at random
# Byte shuffle puts the (mostly zero) high bytes of token ids together and LZF squeezes them:
# SmolLM2-tokenized Alpaca shrinks to about half at a few percent of prepare's time. Both
# filters ship with h5py, so every h5py reads the file.
_COMPRESSED: dict[str, Any] = {"compression": "lzf", "shuffle": True}


class PreparedWriter:
    """Append examples, then leave the ``with`` block to publish the file.

    ``attrs`` are written as HDF5 attributes (dicts and lists as JSON). Leaving the block with an
    exception deletes the temporary file and leaves any earlier file at ``path`` untouched.
    """

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        *,
        flush_tokens: int = 1 << 20,
        label_names: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.attrs = dict(attrs)
        self.flush_tokens = flush_tokens
        self.temp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._file: h5py.File | None = None
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._ends: list[int] = []
        self._labels: list[int] = []
        self._rejected: tuple[list[np.ndarray], list[np.ndarray], list[int]] = ([], [], [])
        self.rejected_tokens = 0
        # In order of first appearance; `label_names` (e.g. a split of a labelled dataset)
        # declares every class up front, so a class missing from this part keeps its place.
        self._label_ids: dict[str, int] = {n: i for i, n in enumerate(label_names or ())}
        self._buffered = 0
        self.examples = 0
        self.total_tokens = 0

    def __enter__(self) -> PreparedWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.temp_path, "w")
        for name, dtype in (("tokens", np.int32), ("loss_mask", np.uint8), ("offsets", np.int64)):
            self._file.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_CHUNK,), **_COMPRESSED
            )
        self._file["offsets"].resize((1,))
        self._file["offsets"][0] = 0
        return self

    def add(
        self,
        tokens: np.ndarray,
        loss_mask: np.ndarray,
        *,
        label: str | None = None,
        rejected: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Append one example (equal lengths, at least one token); with ``label``, its class;
        with ``rejected``, the rejected side of a preference pair (tokens, loss mask). Either
        every example has a label (a rejected side) or none has."""
        for side, mask in (tokens, loss_mask), rejected or (tokens, loss_mask):
            if len(side) != len(mask) or len(side) == 0:
                raise ValueError(
                    f"an example needs as many mask values as tokens (>0), got {len(side)} and {len(mask)}"
                )
        if (label is None) != (not self._labels) and self.examples:
            raise ValueError("either every example has a label or none has")
        if (rejected is None) != (not self.rejected_tokens) and self.examples:
            raise ValueError("either every example has a rejected side or none has")
        if rejected is not None:
            self.rejected_tokens += len(rejected[0])
            self._rejected[0].append(np.asarray(rejected[0], dtype=np.int32))
            self._rejected[1].append(np.asarray(rejected[1], dtype=np.uint8))
            self._rejected[2].append(self.rejected_tokens)
        if label is not None:
            self._labels.append(self._label_ids.setdefault(label, len(self._label_ids)))
        self._tokens.append(np.asarray(tokens, dtype=np.int32))
        self._masks.append(np.asarray(loss_mask, dtype=np.uint8))
        self.total_tokens += len(tokens)
        self._ends.append(self.total_tokens)
        self._buffered += len(tokens)
        self.examples += 1
        if self._buffered >= self.flush_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._ends or self._file is None:
            return
        parts_by_name = [
            ("tokens", self._tokens),
            ("loss_mask", self._masks),
            ("offsets", [np.asarray(self._ends, np.int64)]),
        ]
        if self._labels:
            if "labels" not in self._file:
                self._file.create_dataset(
                    "labels",
                    shape=(0,),
                    maxshape=(None,),
                    dtype=np.int64,
                    chunks=(_CHUNK,),
                    **_COMPRESSED,
                )
            parts_by_name.append(("labels", [np.asarray(self._labels, np.int64)]))
        if self._rejected[2]:
            if "rejected_tokens" not in self._file:
                for name, dtype in (
                    ("rejected_tokens", np.int32),
                    ("rejected_loss_mask", np.uint8),
                    ("rejected_offsets", np.int64),
                ):
                    self._file.create_dataset(
                        name,
                        shape=(0,),
                        maxshape=(None,),
                        dtype=dtype,
                        chunks=(_CHUNK,),
                        **_COMPRESSED,
                    )
                self._file["rejected_offsets"].resize((1,))
                self._file["rejected_offsets"][0] = 0
            parts_by_name += [
                ("rejected_tokens", self._rejected[0]),
                ("rejected_loss_mask", self._rejected[1]),
                ("rejected_offsets", [np.asarray(self._rejected[2], np.int64)]),
            ]
        for name, parts in parts_by_name:
            data = np.concatenate(parts)
            dataset = self._file[name]
            start = dataset.shape[0]
            dataset.resize((start + len(data),))
            dataset[start:] = data
        self._tokens, self._masks, self._ends, self._labels, self._buffered = [], [], [], [], 0
        self._rejected = ([], [], [])

    def finish_labels(self) -> list[str]:
        """Renumber the classes in sorted order of their names, store the names as the
        ``label_names`` attribute, and return them (call once, after the last ``add``)."""
        self._flush()
        names = sorted(self._label_ids)
        if self._file is not None and "labels" in self._file:
            renumber = np.zeros(len(names), dtype=np.int64)
            for rank, name in enumerate(names):
                renumber[self._label_ids[name]] = rank
            labels = self._file["labels"]
            for start in range(0, labels.shape[0], _CHUNK):
                labels[start : start + _CHUNK] = renumber[labels[start : start + _CHUNK]]
        self.attrs["label_names"] = names
        return names

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._file is not None
        if error is not None:
            self._file.close()
            self.temp_path.unlink(missing_ok=True)
            return
        try:
            self._flush()
            for key, value in {**self.attrs, "format_version": FORMAT_VERSION}.items():
                self._file.attrs[key] = (
                    json.dumps(value) if isinstance(value, dict | list) else value
                )
            self._file.flush()
            self._file.close()
            with open(self.temp_path, "rb+") as handle:
                os.fsync(handle.fileno())
            self.temp_path.replace(self.path)
        except BaseException:
            self.temp_path.unlink(missing_ok=True)
            raise


class PreparedDataset:
    """A prepared dataset opened for reading; examples are read lazily, chunk by chunk.

    ``dataset[i]`` is ``(tokens, loss_mask)`` of example ``i`` as numpy arrays. Only the
    offsets (8 bytes per example) are held in memory. Use as a context manager, or ``close()``.
    """

    def __init__(self, path: str | Path, *, cache_bytes: int = 16 << 20) -> None:
        self.path = Path(path)
        self._file = h5py.File(self.path, "r", rdcc_nbytes=cache_bytes)
        missing = {"tokens", "loss_mask", "offsets"} - set(self._file)
        if missing:
            self._file.close()
            raise ValueError(
                f"{self.path}: not a prepared dataset (missing {', '.join(sorted(missing))})"
            )
        self._tokens = self._file["tokens"]
        self._mask = self._file["loss_mask"]
        self.offsets: np.ndarray = self._file["offsets"][:]
        self.lengths: np.ndarray = np.diff(self.offsets)
        self._rejected_offsets: np.ndarray | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        """The attributes, with ``stats`` decoded from JSON."""
        attrs = {key: _plain(value) for key, value in self._file.attrs.items()}
        if isinstance(attrs.get("stats"), str):
            attrs["stats"] = json.loads(attrs["stats"])
        return attrs

    @property
    def label_names(self) -> list[str] | None:
        """The class names of a classification dataset (``labels()`` index them), else None."""
        names = self._file.attrs.get("label_names")
        return json.loads(_plain(names)) if names is not None else None

    def labels(self) -> np.ndarray | None:
        """Each example's class (int64, an index into ``label_names``), or None when the
        dataset has no label column. 8 bytes an example, read whole."""
        return self._file["labels"][:] if "labels" in self._file else None

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        index %= len(self)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self._tokens[start:end], self._mask[start:end]

    @property
    def has_rejected(self) -> bool:
        """Whether this is a dataset of preference pairs (see :meth:`rejected`)."""
        return "rejected_offsets" in self._file

    @property
    def rejected_lengths(self) -> np.ndarray:
        """The length of each pair's rejected side (prompt and rejected answer)."""
        if not self.has_rejected:
            raise ValueError(f"{self.path}: not a dataset of preference pairs")
        if self._rejected_offsets is None:
            self._rejected_offsets = self._file["rejected_offsets"][:]
        return np.diff(self._rejected_offsets)

    def rejected(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The rejected side of pair ``index`` (prompt and rejected answer): tokens and loss
        mask. ``dataset[index]`` is the chosen side."""
        if not self.has_rejected:
            raise ValueError(f"{self.path}: not a dataset of preference pairs")
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        index %= len(self)
        if self._rejected_offsets is None:
            self._rejected_offsets = self._file["rejected_offsets"][:]
        start, end = int(self._rejected_offsets[index]), int(self._rejected_offsets[index + 1])
        return self._file["rejected_tokens"][start:end], self._file["rejected_loss_mask"][start:end]

    def read_tokens(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and mask of the flat range ``[start, end)``, across example boundaries."""
        return self._tokens[start:end], self._mask[start:end]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PreparedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """The attributes of the prepared dataset at ``path``; None when absent or unreadable."""
    try:
        with PreparedDataset(path) as dataset:
            return dataset.attrs
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value
