"""TorchServe's entry module for the YOLOv5 object detectors."""

from handlers.service import ZooHandler
from handlers.tasks.detector import Detector


class DetectorHandler(ZooHandler):
    task_class = Detector
