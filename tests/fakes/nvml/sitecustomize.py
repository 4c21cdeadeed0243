"""With this directory on PYTHONPATH, every Python process started imports the stand-in
NVML as `pynvml`, ahead of nvidia-ml-py's: the system-metrics collector runs from
site-packages, whose own pynvml would otherwise come first on sys.path."""

import sys

import fake_pynvml

sys.modules["pynvml"] = fake_pynvml
