"""Per model family (classifiers, detectors, faces): weights, eager models, parity checks."""
