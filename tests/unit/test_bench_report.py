"""The benchmark report's target checks and its explanation of a missed target."""

from scripts.bench.report import render_markdown, shortfall_lines, targets


def results(ours_req_per_s: float) -> dict:
    """One model served by 2 workers at batch 2 whose model alone does 75 img/s."""
    point = {
        "server": "ours", "model": "face_pixelizer", "image": "small", "concurrency": 8, "requests": 500,
        "req_per_s": ours_req_per_s, "p50_ms": 150.0, "p90_ms": 160.0, "p99_ms": 200.0, "errors": 0,
        "log_bytes_per_request": 0.0, "queue_ms": 70.0, "inference_ms": 150.0,
    }  # fmt: skip
    stages = {"decode": 0.75, "preprocess": 1.0, "forward": 26.0, "postprocess": 3.0}
    return {
        "date": "2026-11-21", "machine": "test", "duration_s": 15, "quick": False, "points": [point],
        "ceilings": {"face_pixelizer": {"workers": 2, "batch": 2, "threads": 1, "compiler": "aoti", "b1": 76.0,
                                        "served": 75.0}},
        "breakdown": {"face_pixelizer": {"batch": 2, **stages}},
    }  # fmt: skip


def test_a_missed_ceiling_target_is_explained_with_this_runs_numbers():
    missed = results(50.0)  # 0.67x of 75
    assert [met for _, _, met in targets(missed)] == [False]
    (_, paragraph) = shortfall_lines(missed, ["face_pixelizer"])
    # 2 workers at 50 req/s: 40 ms per request each; alone 26.7 ms per image; the target allows 38.1 ms.
    assert "spends 40.0 ms" in paragraph and "alone spends 26.7 ms" in paragraph and "allows 38.1 ms" in paragraph
    assert "the handler alone takes 30.8 ms" in paragraph and "remaining 9.2 ms" in paragraph
    assert "**Why face_pixelizer misses" in render_markdown(missed)


def test_a_met_target_needs_no_explanation():
    met = results(60.0)  # 0.8x of 75
    assert [met for _, _, met in targets(met)] == [True]
    assert shortfall_lines(met, ["face_pixelizer"]) == []
    assert "**Why" not in render_markdown(met)


def test_side_by_side_sections_survive_a_rewrite_of_the_document():
    from scripts.bench.report import sections_of, with_section

    document = with_section("# Benchmarks\n", "scaling", "## Scaling\nold")
    document = with_section(document, "scaling", "## Scaling\nnew")  # replaced, not added twice
    document = with_section(document, "metrics_cost", "## Cost\n")
    assert document.count("## Scaling") == 1 and "new" in document and "old" not in document
    rewritten = "# Benchmarks, re-measured\n"
    for name, body in sections_of(document).items():
        rewritten = with_section(rewritten, name, body)
    assert sections_of(rewritten) == sections_of(document) and "re-measured" in rewritten


def test_the_cost_section_compares_every_variant_with_all_off_cycle_by_cycle():
    from scripts.bench.metrics_cost import VARIANTS, render_section

    def point(variant: str, rate: float, frontend_ms: float) -> dict:
        return {"variant": variant, "workers": None, "req_per_s": rate, "p99_ms": 50.0,
                "frontend_cpu_ms": frontend_ms, "worker_cpu_ms": 16.0}  # fmt: skip

    rates = {"all_on": (48.0, 4.8), "metrics_only": (49.0, 4.4), "off": (50.0, 4.0)}
    # the machine's speed drifts by 20 % between cycles; within a cycle the ratios hold
    rounds = [[point(v, rate * factor, ms) for v, (rate, ms) in rates.items()] for factor in (1.0, 0.9, 1.1)]
    results = {"date": "2026-11-22", "machine": "test", "model": "mobilenet_v2", "clients": 8, "duration_s": 8,
               "rounds": rounds}  # fmt: skip
    section = render_section(results)
    assert set(VARIANTS) == set(rates)
    # all on: -4 % req/s; CPU 20.8 vs 20.0 ms -> 20.0 / 20.8 - 1 = -3.8 % as throughput
    assert "| 1 | 48.0 | 49.0 | 50.0 | 20.80 | 20.40 | 20.00 | -4.0% / -3.8% | -2.0% / -2.0% |" in section
    assert "| median | 48.0 | 49.0 | 50.0 | 20.80 | 20.40 | 20.00 | -4.0% / -3.8% | -2.0% / -2.0% |" in section
    assert "| all_on | 4.80 | 16.00 | +0.80 | +0.00 |" in section
    assert "**holds**: throughput -4.0%, CPU per request -3.8% as throughput" in section
    assert "varied by up to 22%" in section  # 1.1 / 0.9, which the pairing cancels
    for points in rounds[:2]:
        points[0]["req_per_s"] = 40.0 * points[2]["req_per_s"] / 50.0  # all on 20 % slower in 2 of 3 cycles
    assert "**MISSED**: throughput -20.0%" in render_section(results)
    for points in rounds:
        points[0]["req_per_s"] = 0.96 * points[2]["req_per_s"]
        points[0]["frontend_cpu_ms"] = 6.0  # all on: +10 % CPU per request
    assert "**MISSED**: throughput -4.0%, CPU per request -9.1% as throughput" in render_section(results)
