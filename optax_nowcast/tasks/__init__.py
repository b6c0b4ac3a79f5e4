"""Tasks: data + model + loss + metric, kept apart from the optimizers (as in learned_optimization)."""

from optax_nowcast.tasks import datasets
from optax_nowcast.tasks.datasets import (
    ImageData,
    TextData,
    load_cifar10,
    load_fashion_mnist,
    load_tiny_shakespeare,
)
from optax_nowcast.tasks.digits import DigitsData, load_digits_split
from optax_nowcast.tasks.models import CNN, GPT, MLP, NNXTutorialCNN, ResCNN, ResNet, ScanTransformer, ViT
from optax_nowcast.tasks.tasks import (
    ARCH_TASKS,
    GENERAL_TASKS,
    TASKS,
    Task,
    TaskSpec,
    conv_as_matmul,
    make_task,
    spec_record,
)

__all__ = [
    "ARCH_TASKS",
    "CNN",
    "GENERAL_TASKS",
    "GPT",
    "MLP",
    "NNXTutorialCNN",
    "ResCNN",
    "ResNet",
    "ScanTransformer",
    "ViT",
    "TASKS",
    "DigitsData",
    "ImageData",
    "Task",
    "TaskSpec",
    "TextData",
    "conv_as_matmul",
    "datasets",
    "load_cifar10",
    "load_digits_split",
    "load_fashion_mnist",
    "load_tiny_shakespeare",
    "make_task",
    "spec_record",
]
