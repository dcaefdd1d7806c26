"""Shard schemes: which shard ids one cluster (one process) runs, out of how many.

The same four shapes as twilight's: Discord's recommendation, an explicit
range, one identify bucket, or one of several consecutive slices, which is
how a bot split over processes gives every process shards of every bucket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gcluster.errors import ShardSchemeError

__all__ = ["ShardScheme"]


@dataclass(frozen=True, slots=True)
class ShardScheme:
    """Which shards to run. Build one with `auto()`, `range()`, `bucket()` or `process()`.

    Attributes:
        ids: the shard ids, ascending; None for `auto()` until resolved.
        total: the bot's shard count; None for `auto()`.
    """

    ids: tuple[int, ...] | None = None
    total: int | None = None

    @classmethod
    def auto(cls) -> ShardScheme:
        """Every shard, as many as GET /gateway/bot recommends."""
        return cls()

    @classmethod
    def range(cls, ids: Iterable[int], total: int) -> ShardScheme:
        """The shards `ids` (a `range` or any iterable of ids) out of `total`."""
        _check_total(total)
        try:
            id_list = list(ids)
        except TypeError as err:
            raise ShardSchemeError(
                f"ids must be an iterable of ints, not {type(ids).__name__}"
            ) from err
        if not id_list:
            raise ShardSchemeError("the scheme holds no shard ids")
        for shard_id in id_list:
            if isinstance(shard_id, bool) or not isinstance(shard_id, int):
                raise ShardSchemeError(f"shard id {shard_id!r} is not an int")
            if not 0 <= shard_id < total:
                raise ShardSchemeError(
                    f"shard id {shard_id} is outside 0..{total - 1} (total {total})"
                )
        if len(set(id_list)) != len(id_list):
            raise ShardSchemeError("shard ids repeat")
        return cls(tuple(sorted(id_list)), total)

    @classmethod
    def bucket(cls, bucket_id: int, concurrency: int, total: int) -> ShardScheme:
        """The shards of one identify bucket: ids with `id % concurrency == bucket_id`."""
        _check_total(total)
        if concurrency < 1:
            raise ShardSchemeError(f"concurrency must be at least 1, not {concurrency}")
        if not 0 <= bucket_id < concurrency:
            raise ShardSchemeError(f"bucket_id {bucket_id} is outside 0..{concurrency - 1}")
        if bucket_id >= total:
            raise ShardSchemeError(f"bucket {bucket_id} holds no shard of {total}")
        return cls(tuple(range(bucket_id, total, concurrency)), total)

    @classmethod
    def process(cls, index: int, count: int, total: int) -> ShardScheme:
        """The `index`-th of `count` consecutive, near-equal slices of `total` shards."""
        _check_total(total)
        if count < 1:
            raise ShardSchemeError(f"count must be at least 1, not {count}")
        if count > total:
            raise ShardSchemeError(f"{count} processes cannot share {total} shards")
        if not 0 <= index < count:
            raise ShardSchemeError(f"index {index} is outside 0..{count - 1}")
        start = index * total // count
        end = (index + 1) * total // count
        return cls(tuple(range(start, end)), total)

    def resolve(self, recommended: int) -> tuple[tuple[int, ...], int]:
        """`(ids, total)`, taking Discord's recommended count for `auto()`."""
        if self.ids is not None and self.total is not None:
            return self.ids, self.total
        _check_total(recommended)
        return tuple(range(recommended)), recommended

    @property
    def is_auto(self) -> bool:
        return self.ids is None


def _check_total(total: int) -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ShardSchemeError(f"total must be a positive int, not {total!r}")
