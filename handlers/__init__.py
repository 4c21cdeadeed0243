"""The zoo's TorchServe handlers: one importable package, shipped inside each model archive
(the archive carries the modules its task imports), in four parts.

- The edge (edge.py, open_inference.py): each TorchServe request parsed once into one
  `Request`, each result rendered once (plain JSON or JPEG, the Open Inference Protocol,
  errors, size limits).
- The batch engine (engine.py): decode, prepare, one forward pass per input shape,
  post-processing where the outputs are; a request that fails, fails alone.
- The tasks (tasks/): classifier, detector, face pixelizer -- `prepare`, `summarise`,
  `postprocess`, and the pure functions they use.
- The observers (observers.py): metrics, the CPU thread budget, idle memory, live drift.

service.py holds `ZooHandler`, the class TorchServe loads, and the compiled-model loader;
each `*_handler.py` here is an entry module TorchServe is given (`--handler`): one class
naming its task. Pure image functions: imaging.py (decode, letterbox, resize),
vision_ops.py (torchvision's native calls, each within what it survives),
image_structure.py (what a file lists, bounded before Pillow reads it).
"""
