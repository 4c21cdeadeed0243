"""The benchmarks' documents: each section rewritten in place by its own script, the
targets judged on the run's own numbers, and the interleaved comparison of
scripts/bench/metrics_cost.py paired cycle by cycle."""

from scripts.bench.doc import markers, with_section
from scripts.bench.endtoend_report import render, summary_lines, targets


def point(server: str, rate: float, p50: float = 20.0, clients: int = 8, model: str = "mobilenet_v2") -> dict:
    return {"server": server, "model": model, "image": "small", "concurrency": clients, "requests": 500,
            "req_per_s": rate, "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "errors": 0,
            "mean_ms": p50, "frontend_cpu_ms": 2.0, "worker_cpu_ms": 10.0, "queue_ms": 1.0, "inference_ms": 9.0,
            "stage_ms": {"decode": 1.0, "preprocess": 0.5, "forward": 6.0, "postprocess": 0.2}}  # fmt: skip


def results(ours: float) -> dict:
    """mobilenet_v2 served by 2 workers at batch 4 whose model alone does 100 img/s."""
    points = [point("ours", ours), point("built-in", 40.0), point("litserve", 50.0), point("ours", 80, 15.0, 1),
              point("built-in", 30, 16.0, 1), point("fastapi", 25, 14.0, 1),
              point("litserve", 40, 15.0, 1)]  # fmt: skip
    return {"date": "2026-12-04", "machine": "test", "seconds": 15, "quick": False, "points": points,
            "ceilings": {"mobilenet_v2": {"workers": 2, "batch": 4, "threads": 1, "compiler": "torchscript",
                                          "b1": 90.0, "served": 100.0, "cpu_ms_per_image": 18.0}},
            "breakdown": {"mobilenet_v2": {"batch": 4, "decode": 1.1, "preprocess": 0.4, "forward": 8.0,
                                           "postprocess": 0.3}},
            "litserve": {"mobilenet_v2": {"best": [8, 0.005], "tried": [
                {"max_batch_size": 8, "batch_timeout": 0.005, "req_per_s": 50.0, "p50_ms": 30.0}]}}}  # fmt: skip


def test_every_target_is_judged_on_the_runs_own_numbers():
    judged = {target: (measured, met) for target, measured, met in targets(results(81.0))}
    assert judged["mobilenet_v2, c=8: >= 2x built-in req/s"] == ("81.0 / 40.0 = 2.02x", True)
    assert judged["mobilenet_v2, c=8: >= 1.2x LitServe req/s"] == ("81.0 / 50.0 = 1.62x", True)
    assert judged["mobilenet_v2, c=8: >= 0.7x the model alone (batch 4)"] == ("81.0 / 100.0 = 0.81x", True)
    assert judged["mobilenet_v2, c=1: p50 <= the built-in's + 10 %"] == ("15.0 ms vs 16.0 ms", True)
    assert judged["mobilenet_v2, c=1: p50 <= the FastAPI app's"] == ("15.0 ms vs 14.0 ms", False)
    missed = {target: met for target, _, met in targets(results(60.0))}
    assert not missed["mobilenet_v2, c=8: >= 2x built-in req/s"] and not missed[
        "mobilenet_v2, c=8: >= 0.7x the model alone (batch 4)"]  # fmt: skip


def test_the_section_holds_every_table_and_the_terminal_summary_every_verdict():
    section = render(results(81.0))
    assert section.startswith("## End to end") and "2026-12-04" in section
    assert "| mobilenet_v2, c=1: p50 <= the FastAPI app's | 15.0 ms vs 14.0 ms | **no** |" in section
    assert "| mobilenet_v2 | ours | small | 8 | 81.0 | 20 | 30 | 12.0 | 0 |" in section  # CPU: 2 + 10 ms
    assert "| mobilenet_v2 | torchscript | 2 | 1 | 4 | 90.0 | 100.0 | 18.0 |" in section
    assert "| mobilenet_v2 | 8 | 5 | **50.0** | 30 |" in section  # LitServe's best setting in bold
    assert "| mobilenet_v2 | 4 | 1.10 | 0.40 | 8.00 | 0.30 | 1.0 | 9.0 | 12.3 |" in section  # 1000 / 81 req/s
    summary = "\n".join(summary_lines(results(81.0)))
    assert "MISS mobilenet_v2, c=1: p50 <= the FastAPI app's" in summary and "MET " in summary


def test_a_section_is_replaced_in_place_and_the_others_are_left_alone():
    document = with_section("# Benchmarks\n\nintro\n", "endtoend", "## End to end\nold")
    document = with_section(document, "metrics_cost", "## Cost\nfirst")
    document = with_section(document, "endtoend", "## End to end\nnew")
    assert document.count("## End to end") == 1 and "new" in document and "old" not in document
    assert document.index(markers("endtoend")[0]) < document.index(markers("metrics_cost")[0])  # kept its place
    assert document.startswith("# Benchmarks\n\nintro\n") and "## Cost\nfirst" in document


def test_the_cost_section_compares_every_variant_with_all_off_cycle_by_cycle():
    from scripts.bench.metrics_cost import VARIANTS, render_section

    def variant(name: str, rate: float, frontend_ms: float) -> dict:
        return {"variant": name, "req_per_s": rate, "frontend_cpu_ms": frontend_ms, "worker_cpu_ms": 16.0}

    rates = {"all_on": (48.0, 4.8), "metrics_only": (49.0, 4.4), "off": (50.0, 4.0)}
    # the machine's speed drifts by 20 % between cycles; within a cycle the ratios hold
    rounds = [[variant(v, rate * factor, ms) for v, (rate, ms) in rates.items()] for factor in (1.0, 0.9, 1.1)]
    results = {"date": "2026-12-04", "machine": "test", "model": "mobilenet_v2", "clients": 8, "slice_s": 8,
               "warmup_s": 10, "rounds": rounds}  # fmt: skip
    section = render_section(results)
    assert set(VARIANTS) == set(rates)
    # all on: -4 % req/s; CPU 20.8 vs 20.0 ms -> 20.0 / 20.8 - 1 = -3.8 % as throughput
    assert "| 1 | 48.0 | 49.0 | 50.0 | 20.80 | 20.40 | 20.00 | -4.0% / -3.8% | -2.0% / -2.0% |" in section
    assert "| median | 48.0 | 49.0 | 50.0 | 20.80 | 20.40 | 20.00 | -4.0% / -3.8% | -2.0% / -2.0% |" in section
    assert "**holds**: throughput -4.0%, CPU per request -3.8%" in section
    for cycle in rounds[:2]:
        cycle[0]["req_per_s"] = 40.0 * cycle[2]["req_per_s"] / 50.0  # all on 20 % slower in 2 of 3 cycles
    assert "**MISSED**: throughput -20.0%" in render_section(results)
