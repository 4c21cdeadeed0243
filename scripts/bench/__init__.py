"""Measuring, as a toolkit plus experiments. The harness: harness.py (a server to load,
one measured point, CPU accounting; a peer that fails to start is said at once), nvml.py
(the GPUs' utilisation), loadgen.py (the closed-loop load), alone.py (the compiled model
alone); the writer: doc.py (each experiment's section of
docs/benchmarks.md). The experiments compose them and never each other: endtoend.py
(make bench, its tables in endtoend_report.py), gpu.py (make bench-gpu), metrics_cost.py,
video.py, replicas.py, handler_speed.py (on a GPU), yolov5_sizes.py, soak.py. The peers
measured beside ours: fastapi_app.py, litserve_app.py; noop_handler.py, TorchServe's
ceiling."""
