import pytest

from hpccnn.common.errors import UserError
from hpccnn.models.zoo import MODELS, get_model

# Parameter counts the seeds print for their input shapes.
SEED_COUNTS = [
    ("cnn_v1", (32, 32, 3), 178_506),
    ("cnn_v3", (32, 32, 3), 122_570),
    ("mnist_cnn", (28, 28, 1), 1_199_882),
    ("alexnet64", (64, 64, 3), 2_915_338),
]


@pytest.mark.parametrize("name,shape,params", SEED_COUNTS)
def test_parameter_counts_match_the_seeds(name, shape, params):
    assert MODELS[name](shape, 10).count_params() == params


def test_alexnet64_non_trainable_params_are_the_seeds_batchnorm_statistics():
    model = MODELS["alexnet64"]((64, 64, 3), 10)
    non_trainable = sum(int(w.shape.num_elements()) for w in model.non_trainable_weights)
    assert non_trainable == 2_304  # seed 003: "Non-trainable params: 2,304"


@pytest.mark.parametrize("name,shape", [("alexnet_galaxy10", (69, 69, 3)), ("alexnet227", (227, 227, 3)),
                                        ("alexnet227_extra_dense", (227, 227, 3)), ("cnn_v2", (32, 32, 3))])
def test_every_model_builds_for_its_seed_input(name, shape):
    model = MODELS[name](shape, 10)
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, *shape)


def test_the_registry_holds_each_seeds_input_shape():
    # what hpccnn.bench builds each model for; mnist_cnn's seed (002) trains on grey MNIST
    shapes = {"cnn_v3": (32, 32, 3), "mnist_cnn": (28, 28, 1), "alexnet64": (64, 64, 3),
              "alexnet_galaxy10": (69, 69, 3), "alexnet227": (227, 227, 3)}
    assert {name: MODELS[name].input_shape for name in shapes} == shapes


def test_extra_dense_variant_adds_exactly_one_dense4096_dropout_block():
    base = [type(l).__name__ for l in MODELS["alexnet227"]((227, 227, 3), 10).layers]
    extra = [type(l).__name__ for l in MODELS["alexnet227_extra_dense"]((227, 227, 3), 10).layers]
    assert len(extra) == len(base) + 2
    assert extra.count("Dense") == base.count("Dense") + 1 == 4
    assert extra.count("Dropout") == base.count("Dropout") + 1


def test_class_count_and_channels_come_from_the_dataset():
    model = MODELS["cnn_v3"]((32, 32, 1), 7)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 7)


def test_seed_001_models_output_logits_and_the_others_softmax():
    assert all(MODELS[n].logits for n in ("cnn_v1", "cnn_v2", "cnn_v3"))
    assert MODELS["cnn_v3"]((32, 32, 3), 10).layers[-1].activation.__name__ == "linear"
    assert MODELS["mnist_cnn"]((28, 28, 1), 10).layers[-1].activation.__name__ == "softmax"


def test_activation_reaches_every_hidden_layer():
    model = MODELS["cnn_v3"]((32, 32, 3), 10, activation="sigmoid")
    hidden = [l for l in model.layers[:-1] if hasattr(l, "activation")]
    assert hidden and all(l.activation.__name__ == "sigmoid" for l in hidden)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(UserError, match="cnn_v3"):
        get_model("resnet50")


@pytest.mark.slow  # 70 models built: 20 s in all
@pytest.mark.parametrize("name", [n for n in MODELS if n != "alexnet227_extra_dense"])  # same convs as alexnet227
def test_output_side_arithmetic_agrees_with_keras(name):
    """hpccnn resizes images a model can't take (cnn_v3 on 8x8 digits) by arithmetic, without building
    the model; the arithmetic must say 0 exactly where Keras can't build it, and the side where it can."""
    import tensorflow as tf

    spec = MODELS[name]
    for side in (5, 8, 10, 14, 28, 32, 36, 64, 69, 100):
        expected = spec.output_side(side)
        try:
            model = spec((side, side, 1), 10)
        except ValueError:  # "Negative dimension size"
            assert expected == 0, (name, side)
            continue
        flatten = next(layer for layer in model.layers if isinstance(layer, tf.keras.layers.Flatten))
        assert flatten.input_shape[1] == expected > 0, (name, side)
