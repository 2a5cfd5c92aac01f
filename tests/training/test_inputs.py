"""How a rank reads a data set held in memory (hpccnn.training.inputs): its own shard, through tf.data pipelines."""

import numpy as np

from hpccnn.training import inputs
from hpccnn.training.inputs import Batches


def test_shards_are_disjoint_and_cover_everything():
    x = np.arange(11)
    shards = [inputs.shard(x, r, 3) for r in range(3)]
    assert sorted(np.concatenate(shards)) == list(range(11))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_pipeline_scales_resizes_and_batches():
    x = np.full((10, 8, 8, 1), 16, np.uint8)
    y = np.arange(10)
    batches = list(inputs.pipeline(x, y, 4, 1 / 16, image_size=32))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images = batches[0][0].numpy()
    assert images.shape == (4, 32, 32, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images, 1.0, atol=1e-6)


def test_training_pipeline_gives_full_batches_in_an_order_fixed_by_seed_and_epoch():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10)
    labels = epoch_labels(x, y, Batches(4, 2, seed=3, first_epoch=0, epochs=3))
    assert [len(b) for b in labels] == [4] * 6  # 3 epochs x 2 steps, full batches only
    epochs = [sum(labels[2 * e:2 * e + 2], []) for e in range(3)]
    assert all(len(set(e)) == 8 for e in epochs)  # no image twice within an epoch
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    # a run resumed at epoch 2 sees exactly the batches the uninterrupted run saw in epoch 2
    resumed = epoch_labels(x, y, Batches(4, 2, seed=3, first_epoch=2, epochs=3))
    assert sum(resumed, []) == epochs[2]
    other = epoch_labels(x, y, Batches(4, 2, seed=4, first_epoch=2, epochs=3))
    assert sum(other, []) != epochs[2]


def epoch_labels(x, y, batches):
    return [b[1].numpy().tolist() for b in inputs.train_pipeline(x, y, batches, 1.0)]
