"""MinHash signatures and an LSH index that finds near duplicates as rows stream in.

A row's signature is ``num_perm`` values computed from its n-gram hashes such that two rows
agree at a position with probability equal to the Jaccard similarity of their n-gram sets;
the share of equal positions estimates it. The index cuts signatures into ``bands`` of
``rows_per_band`` values: rows that agree on a whole band become candidates, and a candidate
counts as a duplicate only when its estimated similarity reaches the threshold (banding
alone lets through many pairs well below it).

Written with numpy rather than datasketch: datasketch's MinHash computes ``num_perm`` hashes
of every n-gram, row by row from Python, and MinHashLSH keeps its buckets in Python dicts
(about 100 bytes a key). Here a batch of rows is a few array operations, each n-gram is
hashed once, and the index is sorted numpy arrays.
"""

from __future__ import annotations

import math

import numpy as np

from ft_data.ngrams import NgramBatch, splitmix64

_U64 = np.uint64
_PAIRS = 1 << 15  # candidate pairs verified at once
_BLOCK_BITS = 16
_BLOCK = 1 << _BLOCK_BITS  # kept signatures per storage block: 16 MiB at 64 values


class MinHasher:
    """One-permutation MinHash with optimal densification (Shrivastava, ICML 2017).

    Classic MinHash computes ``num_perm`` hashes of every n-gram; here each n-gram is hashed
    once (mixed with ``seed``) and the hash both picks one of ``num_perm`` bins and gives the
    value kept if it is the bin's smallest: ``num_perm`` times less hashing, and the same
    accuracy once rows have more n-grams than bins (more than 64 words at the default).
    A bin that no n-gram fell into copies the value of the first non-empty bin along a probe
    sequence that depends on the bin's number only, so two rows still agree at a position
    with probability equal to their Jaccard similarity.
    """

    def __init__(self, num_perm: int = 64, seed: int = 0) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm must be at least 1, got {num_perm}")
        self.num_perm = num_perm
        seed &= (1 << 64) - 1
        self._seed = splitmix64(np.array([seed, seed ^ 0x5BD1E995], dtype=_U64))

    def signatures(self, ngrams: NgramBatch, rows: int) -> np.ndarray:
        """A ``(rows, num_perm)`` uint32 array, one signature per row of the batch.

        A row without n-grams (no words) gets the maximum value everywhere, so such rows all
        have the same signature.
        """
        bins = _U64(self.num_perm)
        mixed = splitmix64(ngrams.hash ^ self._seed[0])
        cells = ngrams.row * self.num_perm + ((mixed >> _U64(32)) * bins >> _U64(32)).astype(
            np.int64
        )
        lowest = np.full(rows * self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        np.minimum.at(lowest, cells, (mixed & _U64(0xFFFFFFFF)).astype(np.uint32))
        filled = np.zeros(len(lowest), dtype=bool)
        filled[cells] = True
        has_ngrams = np.repeat(np.bincount(ngrams.row, minlength=rows) > 0, self.num_perm)
        empty = np.flatnonzero(~filled & has_ngrams)
        attempt = 0
        while len(empty):  # each round, every still-empty bin probes one more bin of its row
            attempt += 1
            position = empty % self.num_perm
            probe = splitmix64(
                ((position.astype(_U64) << _U64(32)) + _U64(attempt)) ^ self._seed[1]
            )
            source = empty - position + ((probe >> _U64(32)) * bins >> _U64(32)).astype(np.int64)
            found = filled[source]
            lowest[empty[found]] = lowest[source[found]]
            empty = empty[~found]
        return lowest.reshape(rows, self.num_perm)


def lsh_bands(threshold: float, num_perm: int, *, recall: float = 0.99) -> tuple[int, int]:
    """``(bands, rows_per_band)``: the longest bands (fewest chance candidates) that still make
    a pair of similarity exactly ``threshold`` a candidate with probability ``recall``.

    A pair of similarity s agrees on a band of r values with probability s**r, so it becomes
    a candidate in one of b bands with probability 1 - (1 - s**r)**b. Candidates are verified,
    so chance candidates cost only time, while a missed pair is a duplicate left in the data:
    hence recall first (datasketch's MinHashLSH weighs both kinds of error equally, and finds
    only 31% of the pairs at 0.85 with 64 permutations).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the similarity threshold must be in (0, 1], got {threshold}")
    choice = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands < recall:
            break
        choice = (bands, rows)
    return choice


class NearDuplicateIndex:
    """Rows are added in order, in batches. A row is a near duplicate when it shares an LSH
    band with an earlier kept row whose estimated similarity to it is at least ``threshold``;
    it then names the earliest such kept row. Other rows are kept and indexed.

    A band bucket holds at most ``bucket_size`` kept rows: data with thousands of rows that
    are alike but below the threshold (templated rows) would otherwise make every new row
    verify against all of them, and time grow with the square of the rows. The cost is that
    a duplicate is missed when every band of it lands in a full bucket that lacks the row it
    duplicates; at the default thresholds that needs hundreds of look-alike rows.

    Memory: per kept row, its signature (4 bytes a value) and at most one 16-byte entry per
    band; rows found to be duplicates cost nothing after their batch.
    """

    def __init__(self, *, threshold: float, num_perm: int, bucket_size: int = 16) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.bucket_size = bucket_size
        self.bands, self.band_rows = lsh_bands(threshold, num_perm)
        # Equal values needed: the share of equal values is compared in integers, so that
        # 0.85 * 64 = 54.4 means 55 without floating-point doubt.
        self._needed = math.ceil(threshold * num_perm - 1e-9)
        self.rows_seen = 0
        self.kept = 0
        self._kept_rows = np.zeros(0, dtype=np.int64)  # global row of each kept slot
        # Kept signatures by slot, in fixed blocks: growing one array would copy it, and
        # for a moment hold it twice.
        self._blocks: list[np.ndarray] = []
        self._keys = [np.zeros(0, dtype=_U64) for _ in range(self.bands)]  # sorted band keys
        self._slots = [np.zeros(0, dtype=np.int32) for _ in range(self.bands)]  # their slots

    def add(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add the next rows; return, per row, the global index of the kept row it duplicates
        (-1 when it is kept itself) and the estimated similarity (0.0 for kept rows)."""
        count = len(signatures)
        keys = self._band_keys(signatures)
        duplicate_of, similarity = self._match_kept(signatures, keys)
        kept = duplicate_of < 0
        # Rows that share a band with another row of this batch are settled one by one, in
        # order, since whether one is kept decides whether a later one is its duplicate.
        clashing = np.zeros(count, dtype=bool)
        for band in range(self.bands):
            order = np.argsort(keys[:, band], kind="stable")
            same = keys[order[1:], band] == keys[order[:-1], band]
            clashing[order[1:][same]] = True
            clashing[order[:-1][same]] = True
        buckets: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        pending = np.flatnonzero(clashing & kept)
        for row, row_keys in zip(pending.tolist(), keys[pending].tolist(), strict=True):
            candidates: set[int] = set()
            for bucket, key in zip(buckets, row_keys, strict=True):
                candidates.update(bucket.get(key, ()))
            if candidates:
                earlier = sorted(candidates)
                equal = np.count_nonzero(signatures[earlier] == signatures[row], axis=1)
                hits = np.flatnonzero(equal >= self._needed)
                if len(hits):
                    duplicate_of[row] = self.rows_seen + earlier[hits[0]]
                    similarity[row] = equal[hits[0]] / self.num_perm
                    kept[row] = False
                    continue
            for bucket, key in zip(buckets, row_keys, strict=True):
                members = bucket.setdefault(key, [])
                if len(members) < self.bucket_size:
                    members.append(row)
        self._insert(np.flatnonzero(kept), signatures, keys)
        self.rows_seen += count
        return duplicate_of, similarity

    def _band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One uint64 per (row, band): the band's values hashed together."""
        values = signatures[:, : self.bands * self.band_rows].astype(_U64)
        values = values.reshape(len(signatures), self.bands, self.band_rows)
        keys = np.zeros((len(signatures), self.bands), dtype=_U64)
        for i in range(self.band_rows):
            keys = splitmix64(keys ^ values[:, :, i])
        return keys

    def _match_kept(
        self, signatures: np.ndarray, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each row, the earliest kept row of earlier batches it duplicates (or -1)."""
        duplicate_of = np.full(len(signatures), -1, dtype=np.int64)
        similarity = np.zeros(len(signatures), dtype=np.float64)
        if self.kept == 0:
            return duplicate_of, similarity
        pairs = []
        for band in range(self.bands):
            low = np.searchsorted(self._keys[band], keys[:, band], side="left")
            high = np.searchsorted(self._keys[band], keys[:, band], side="right")
            sizes = high - low
            rows = np.repeat(np.arange(len(signatures)), sizes)
            within = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            slots = self._slots[band][np.repeat(low, sizes) + within]
            pairs.append(rows * self.kept + slots.astype(np.int64))
        # Sorted by row, then slot: the first verified pair of a row is its earliest match.
        # (np.sort then a comparison, because np.unique hashes and is 20 times slower here.)
        ordered = np.sort(np.concatenate(pairs))
        unique = ordered[np.flatnonzero(np.diff(ordered, prepend=-1))]
        rows, slots = unique // self.kept, unique % self.kept
        equal = np.concatenate(
            [  # in chunks, so the (pairs, num_perm) comparison stays a few MiB
                np.count_nonzero(
                    self._kept_signatures(slots[i : i + _PAIRS])
                    == signatures[rows[i : i + _PAIRS]],
                    axis=1,
                )
                for i in range(0, len(rows), _PAIRS)
            ]
            or [np.zeros(0, dtype=np.int64)]
        )
        verified = equal >= self._needed
        rows, slots, equal = rows[verified], slots[verified], equal[verified]
        first = np.flatnonzero(np.diff(rows, prepend=-1))
        matched = rows[first]
        duplicate_of[matched] = self._kept_rows[slots[first]]
        similarity[matched] = equal[first] / self.num_perm
        return duplicate_of, similarity

    def _kept_signatures(self, slots: np.ndarray) -> np.ndarray:
        block = slots >> _BLOCK_BITS
        out = np.empty((len(slots), self.num_perm), dtype=np.uint32)
        for index in np.flatnonzero(np.bincount(block, minlength=len(self._blocks))):
            here = block == index
            out[here] = self._blocks[index][slots[here] & (_BLOCK - 1)]
        return out

    def _insert(self, rows: np.ndarray, signatures: np.ndarray, keys: np.ndarray) -> None:
        slots = (self.kept + np.arange(len(rows))).astype(np.int32)
        done = 0
        while done < len(rows):  # fill the last block, then start new ones
            if self.kept + done == len(self._blocks) * _BLOCK:
                self._blocks.append(np.empty((_BLOCK, self.num_perm), dtype=np.uint32))
            offset = (self.kept + done) % _BLOCK
            take = min(len(rows) - done, _BLOCK - offset)
            self._blocks[-1][offset : offset + take] = signatures[rows[done : done + take]]
            done += take
        self._kept_rows = np.concatenate((self._kept_rows, self.rows_seen + rows))
        for band in range(self.bands):
            order = np.argsort(keys[rows, band], kind="stable")
            new, new_slots = keys[rows[order], band], slots[order]
            # A row's place in its bucket: rows already there, plus earlier rows of this batch.
            low = np.searchsorted(self._keys[band], new, side="left")
            at = np.searchsorted(self._keys[band], new, side="right")
            group_start = np.flatnonzero(np.diff(new, prepend=new[:1] ^ _U64(1)))
            sizes = np.diff(np.append(group_start, len(new)))
            rank = np.arange(len(new)) - np.repeat(group_start, sizes)
            room = (at - low) + rank < self.bucket_size
            self._keys[band] = np.insert(self._keys[band], at[room], new[room])
            self._slots[band] = np.insert(self._slots[band], at[room], new_slots[room])
        self.kept += len(rows)
