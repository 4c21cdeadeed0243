"""TorchServe's entry module for the face pixelizer: photo in, the same photo with every
face pixelated out (or, with format=json, the faces found)."""

from handlers.service import ZooHandler
from handlers.tasks.face import FacePixelizer


class FacePixelizerHandler(ZooHandler):
    task_class = FacePixelizer
