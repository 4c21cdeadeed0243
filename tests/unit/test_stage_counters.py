"""The peers' stage counters: each of a peer server's processes adds to a file of its own
that the benchmark reads while the server runs (scripts/bench/stage_counters.py)."""

import multiprocessing

from scripts.bench.stage_counters import COUNTERS, read_stage_counters, stage_counters


def count_in_a_process(directory: str, requests: int, seconds: float) -> None:
    counters = stage_counters(directory)
    counters[COUNTERS.index("requests")] += requests
    counters[COUNTERS.index("decode_s")] += seconds


def test_counters_of_every_worker_process_add_up_and_are_read_while_they_live(tmp_path):
    assert read_stage_counters(tmp_path) == dict.fromkeys(COUNTERS, 0.0)  # no worker yet
    mine = stage_counters(str(tmp_path))
    mine[COUNTERS.index("forward_s")] += 0.25  # visible without a flush or a close
    assert read_stage_counters(tmp_path)["forward_s"] == 0.25
    worker = multiprocessing.get_context("spawn").Process(target=count_in_a_process, args=(str(tmp_path), 3, 0.5))
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 0
    assert read_stage_counters(tmp_path) == {"requests": 3.0, "decode_s": 0.5, "images": 0.0, "forward_s": 0.25}


def test_no_directory_means_no_counting():
    assert stage_counters(None) is None and stage_counters("") is None
