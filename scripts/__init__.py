"""Everything around the handlers, one job per sub-package; dependencies point one way
(bench and serve may use build, never the reverse):

- zoo.py      the model table: which models exist and how each is built and served
- nets/       architectures and input adapters (nn.Module only, no I/O)
- families/   per-family weights, eager models and parity checks (classifiers, detectors, faces)
- build/      compile, archive, weights, inspection of builds, labels
- serve/      a TorchServe's lifecycle: start, wait until ready, stop
- bench/      measuring: benchmarks, load generator, soak, reports, test photos
- monitor/    watching served models: the offline input-drift report
- setup/      finishing the virtualenv (Java, activation)
"""
