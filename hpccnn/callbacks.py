"""hpccnn's Keras callbacks: per-epoch statistics (every rank) and the rank-0 recorder."""

import time

import tensorflow as tf


class EpochStats(tf.keras.callbacks.Callback):
    """Adds learning rate, epoch seconds and training images/s to each epoch's logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:  # validation starts: training for this epoch is done
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self.images_per_epoch / (self.train_seconds or seconds)


class RankZeroRecorder(tf.keras.callbacks.Callback):
    """Rank 0: after every epoch, history.csv and a checkpoint, so a killed job keeps its epochs."""

    def __init__(self, writer):
        super().__init__()
        self.writer = writer
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        self.writer.history(self.rows)
        self.writer.checkpoint(self.model, epoch + 1)
        self.writer.status("running", last_epoch=epoch + 1)
