"""Model files of a user's own, as text: tests write them outside the repository and train them."""

import textwrap
from pathlib import Path

# A Functional model with a residual connection and a layer of the user's own (no get_config: Keras can't
# save the model whole, so hpccnn keeps its weights), a Sequential one, a subclassed one, a compiled one.
MYNETS = textwrap.dedent('''
    import tensorflow as tf
    from tensorflow import keras


    class Scale(keras.layers.Layer):
        """A learned scale per channel: a layer of the user's own."""

        def __init__(self, start, **kwargs):
            super().__init__(**kwargs)
            self.start = start

        def build(self, input_shape):
            self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],),
                                         initializer=keras.initializers.Constant(self.start))

        def call(self, x):
            return x * self.gamma


    def small_resnet(input_shape, classes, width=8, activation="relu"):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(width, 3, padding="same", activation=activation)(inputs)
        y = keras.layers.Conv2D(width, 3, padding="same")(x)
        y = Scale(0.5)(y)
        x = keras.layers.Activation(activation)(keras.layers.Add()([x, y]))
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(classes)(x))


    def sequential(input_shape, num_classes):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                 keras.layers.Dense(num_classes, activation="softmax")])


    class Tiny(keras.Model):
        def __init__(self, classes):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(classes)

        def call(self, x):
            return self.out(self.flat(x))


    def subclassed(classes):
        return Tiny(classes)


    def compiled(input_shape, classes):
        model = sequential(input_shape, classes)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                      metrics=["sparse_top_k_categorical_accuracy"])
        return model


    def broken(input_shape, classes):
        widths = {"narrow": 4}
        return widths["wide"]  # the user's bug


    def not_a_model(input_shape, classes):
        return "a model"


    def wrong_output(input_shape):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(3)])


    NOT_CALLABLE = 3
''')


def write_mynets(folder: Path, name="mynets.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(MYNETS)
    return path
