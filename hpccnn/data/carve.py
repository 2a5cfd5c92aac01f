"""A staged pack's training, validation and test sets: which of its records each holds, carved alike from every
shard, so that a pack held in memory and the same pack streamed from its shards (hpccnn.training.stream) train on
the same images.

The split into training, validation and test sets is the one the in-memory path makes of other data sets
(hpccnn.data.builtin.split, by position in the pack's order), but carved alike from every shard: carve.
"""

import numpy as np


def kept(split: dict) -> np.ndarray:
    """The source indices of a split's records, in the pack's order (what pack.load sorts them by)."""
    total = split["count"] + len(split.get("skipped_index", []))
    return np.setdiff1d(np.arange(total, dtype=np.int64), np.asarray(split.get("skipped_index", []), np.int64))


def shard_order(k: int, n: int, total: int) -> np.ndarray:
    """The source indices shard k of n holds, in the order it holds them: every n-th image from k on, so every
    shard has every class alike, in an order seeded by k. A folder's images come class by class, and a rank
    streams its shards through a bounded shuffle: written in the folder's order, a rank's batches would hold a
    few classes at a time."""
    stride = np.arange(k, total, n, dtype=np.int64)
    return stride[np.random.default_rng(k).permutation(len(stride))]


def in_shard(split: dict, k: int) -> np.ndarray:
    """The source indices in shard k of a split, in the order they were written (pack.write_shard), less those
    that could not be read."""
    total = split["count"] + len(split.get("skipped_index", []))
    order = shard_order(k, len(split["shards"]), total)
    return order[~np.isin(order, np.asarray(split.get("skipped_index", []), np.int64))]


def carve(train: np.ndarray, positions: np.ndarray, shards: int, fraction: float, seed) -> tuple:
    """(kept, carved) of positions into the training split's source indices train: fraction carved at random,
    each shard losing the same share of its images, so that the ranks' shares stay equal (a tiny pack, whose
    shards are too small to share alike, at random)."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(positions, test_size=fraction, random_state=seed, stratify=train[positions] % shards)
    except ValueError:
        return train_test_split(positions, test_size=fraction, random_state=seed)


def sets(index: dict, exp) -> dict:
    """The training, validation and test sets as (the pack's split, its source indices in the set's order), the
    same whether the pack is held in memory or streamed: a test/ split, else val/, else test_fraction of the
    training images; validation val/ beside test/, else val_fraction of what is left, or the test set (as
    hpccnn.data.builtin.split makes them of other data sets, but carved alike from every shard: carve)."""
    splits = index["splits"]
    train, shards = kept(splits["train"]), len(splits["train"]["shards"])
    positions = np.arange(len(train))
    own_test = "test" if "test" in splits else ("val" if "val" in splits else None)
    if own_test is None:
        positions, test_positions = carve(train, positions, shards, exp.test_fraction, exp.seed)
        test = ("train", train[test_positions])
    else:
        test = (own_test, kept(splits[own_test]))
    if exp.validation == "test":
        val = test
    elif "test" in splits and "val" in splits:
        val = ("val", kept(splits["val"]))
    else:
        positions, val_positions = carve(train, positions, shards, exp.val_fraction, exp.seed)
        val = ("train", train[val_positions])
    return {"train": ("train", train[positions]), "val": val, "test": test}


def in_memory(raw, index: dict, exp) -> dict:
    """A pack's sets from its arrays (pack.load: each split's images in the pack's order), as {"train", "val",
    "test": (images, labels)}: the sets a streamed pack reads (sets), for hpccnn.data.base.Splits."""
    own = {"train": (raw.x_train, raw.y_train)}
    own_test = "test" if "test" in index["splits"] else ("val" if "val" in index["splits"] else None)
    if own_test:
        own[own_test] = (raw.x_test, raw.y_test)
    if own_test == "test" and "val" in index["splits"]:
        own["val"] = (raw.x_val, raw.y_val)
    chosen = {}
    for name, (split, order) in sets(index, exp).items():
        x, y = own[split]
        at = np.searchsorted(kept(index["splits"][split]), order)
        chosen[name] = (x[at], y[at])
    return chosen


def positions(index: dict, which) -> np.ndarray:
    """For each source index of which's split: its position in the set, or -1 where it is not in it."""
    split, order = which
    split = index["splits"][split]
    found = np.full(split["count"] + len(split.get("skipped_index", [])), -1, np.int64)
    found[order] = np.arange(len(order))
    return found
