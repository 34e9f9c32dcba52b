"""Built-in tasks: a registry keyed by name, each a dataset plus a teacher recipe."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.tasks.base import IMAGE_INPUT, InputSpec, Task
from search.tasks.decoder import WORDNET_LM_SPEC
from search.tasks.encoder import WORDNET_SPEC
from search.tasks.models import DIGITS_SPEC, FASHION_RESNET_SPEC, FASHION_SPEC
from search.tasks.teacher import TeacherSpec, TrainRecipe, output_kind
from search.tasks.wordnet import SUPERSENSES, ids_and_mask, load_wordnet_lm, load_wordnet_supersense


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    description: str
    spec: TeacherSpec
    recipe: TrainRecipe
    input_shape: tuple  # one sample's shape; several inputs: one tuple per input
    class_names: tuple[str, ...]
    load_data: Callable[[str | Path | None], dict[str, np.ndarray]]
    input_spec: InputSpec | tuple[InputSpec, ...] = IMAGE_INPUT
    # A split's x array -> the model's inputs {name: array}, for a model with several (None: x is the input).
    # The teacher trains on x alone: a model whose extra inputs are computed from x (a padding mask) has none.
    to_inputs: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None


def _digits(_data_dir: str | Path | None) -> dict[str, np.ndarray]:
    from search.tasks.data import load_digits_split

    return load_digits_split()


def _fashion(data_dir: str | Path | None) -> dict[str, np.ndarray]:
    from search.tasks.data import load_fashion_mnist

    return load_fashion_mnist(data_dir)


# The encoder takes the ids and their attention mask, as BERT-style models ship. It is trained on the ids alone, with
# padding read from them (id 0); the mask, 1 where the id is not 0, tells it the same, so it computes the same.
_WORDNET_INPUT = (InputSpec(name="input_ids", dtype="int64", value_range=(0.0, WORDNET_SPEC.vocab - 1.0),
                            normalisation="token ids of search.tasks.wordnet.encode (0 = padding, 1 = unknown)"),
                  InputSpec(name="attention_mask", dtype="int64", value_range=(0.0, 1.0),
                            normalisation="1 = a token of the text, 0 = padding (where input_ids is 0)"))
_WORDNET_LM_INPUT = InputSpec(dtype="int64", value_range=(0.0, WORDNET_LM_SPEC.vocab - 1.0),
                              normalisation="token ids of search.tasks.wordnet.encode with its LM_VOCAB words "
                                            "(0 = padding after the text, 1 = unknown)")
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in (
        BuiltinTask(
            "digits", "scikit-learn's 8x8 digits (1,168 train / 270 val / 359 test), for fast tests",
            DIGITS_SPEC, TrainRecipe(epochs=40, lr=0.01, batch_size=64, shift=1),
            (1, 8, 8), tuple(str(i) for i in range(10)), _digits,
        ),
        BuiltinTask(
            "fashion-mnist", "Fashion-MNIST 28x28 (55,000 train / 5,000 val from the training files; 10,000 test)",
            FASHION_SPEC, TrainRecipe(epochs=12, lr=0.01, batch_size=128, flip=True, shift=2),
            (1, 28, 28), _FASHION_CLASSES, _fashion,
        ),
        BuiltinTask(
            "fashion-mnist-resnet18", "Fashion-MNIST with a ResNet-18 teacher of realistic size (half width, "
            "28x28 padded to 32x32 in the graph; ~1.2 ms on one core): the headline benchmark",
            FASHION_RESNET_SPEC, TrainRecipe(epochs=10, lr=0.005, batch_size=128, flip=True, shift=2),
            (1, 28, 28), _FASHION_CLASSES, _fashion,
        ),
        BuiltinTask(
            "wordnet-supersense", "real English text: WordNet 3.0 noun glosses (50,597 train / 6,324 val / "
            "6,324 test) labelled by their ten largest supersenses, 32 token ids each; a 4-layer BERT-style teacher "
            "that takes the ids and their attention mask",
            WORDNET_SPEC, TrainRecipe(epochs=8, lr=0.001, batch_size=128),
            ((WORDNET_SPEC.max_len,), (WORDNET_SPEC.max_len,)),
            tuple(n.removeprefix("noun.") for n in SUPERSENSES.values()),
            load_wordnet_supersense, _WORDNET_INPUT, ids_and_mask,
        ),
        BuiltinTask(
            "wordnet-lm", "a causal language model on real text: next-word prediction over the same WordNet "
            "glosses and splits (4,096 words, 32 positions; unknown words and padding are not scored); a 4-layer "
            "GPT-style teacher; latency is one forward pass over a 32-token prompt",
            WORDNET_LM_SPEC, TrainRecipe(epochs=6, lr=0.002, batch_size=128, label_smoothing=0.0),
            (WORDNET_LM_SPEC.max_len,), (), load_wordnet_lm, _WORDNET_LM_INPUT,
        ),
    )
}


def load_builtin(name: str, *, data_dir: str | Path | None = None, results_dir: str | Path = "results",
                 train_on: str = "auto", progress: bool = True, retrain: bool = False) -> Task:
    import torch
    from torch.utils.data import TensorDataset

    from search.tasks.data import fingerprint
    from search.tasks.inputs import InputsDataset
    from search.tasks.teacher import augment_batch, get_teacher

    b = BUILTIN_TASKS[name]
    data = b.load_data(data_dir)
    teacher, meta = get_teacher(name, b.spec, b.recipe, data, data_fp=fingerprint(data), results_dir=results_dir,
                                train_on=train_on, progress=progress, retrain=retrain)
    for p in teacher.parameters():
        p.requires_grad_(False)

    def split(part: str):
        x, y = data[f"{part}_x"], torch.from_numpy(data[f"{part}_y"])
        return TensorDataset(torch.from_numpy(x), y) if b.to_inputs is None else InputsDataset(b.to_inputs(x), y)

    return Task(
        name=name,
        teacher=teacher.eval(),
        train=split("train"),
        val=split("val"),
        test=split("test"),
        input_shape=b.input_shape,
        num_classes=b.spec.num_classes,
        class_names=b.class_names,
        input_spec=b.input_spec,
        output_kind=output_kind(b.spec),
        description=b.description,
        teacher_info=meta,
        augment=functools.partial(augment_batch, recipe=b.recipe) if b.recipe.flip or b.recipe.shift else None,
    )
