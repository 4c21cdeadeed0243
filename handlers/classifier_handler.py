"""TorchServe's entry module for the ImageNet classifiers (ResNet, MobileNetV2, EfficientNet-Lite0)."""

from handlers.service import ZooHandler
from handlers.tasks.classifier import Classifier


class ClassifierHandler(ZooHandler):
    task_class = Classifier
