"""The GPUs' utilisation while a point is measured, from NVML (nvidia-ml-py): nothing, and
no error, where there is no NVIDIA driver or no nvidia-ml-py (the CPU, CI)."""

import threading


class GpuSampler:
    """The GPUs' utilisation (NVML) sampled every `interval` s while in a `with` block:
    `busy` is the mean over the samples and the GPUs, None without an NVIDIA driver."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.samples, self.busy = interval, [], None

    def __enter__(self) -> "GpuSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no nvidia-ml-py or no driver: nothing to sample
            self.nvml = None
            return self
        self.nvml, self.done = pynvml, threading.Event()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

        def sample() -> None:
            while not self.done.wait(self.interval):
                self.samples += [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.nvml is not None:
            self.done.set()
            self.thread.join()
            self.nvml.nvmlShutdown()
            self.busy = sum(self.samples) / len(self.samples) if self.samples else None
