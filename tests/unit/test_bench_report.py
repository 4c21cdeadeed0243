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


def test_the_memory_section_adds_up_every_process_side_by_side(tmp_path):
    import os

    from scripts.bench.memory import frontend_pid, process_memory, render_section

    def server(scale: float) -> dict:
        worker = {"pid": 1, "rss": 800 * scale, "pss": 500 * scale, "uss": 400 * scale}
        return {"frontend": {"rss": 250, "pss": 240, "uss": 230},
                "models": {"mobilenet_v2": [worker, worker], "yolov5s": [{**worker, "rss": 900 * scale}]}}  # fmt: skip

    results = {"date": "2026-11-22", "machine": "test", "soak_s": 600, "concurrency": 8, "before": "abc1234",
               "soak_models": ["mobilenet_v2"], "loads": {"before": {"requests": 100, "unexpected": 0},
               "after": {"requests": 90, "unexpected": 1}}, "idle": {"before": server(1.0), "after": server(0.75)},
               "after_soak": {"before": server(1.5), "after": server(0.75)},
               "imports": [{"step": "python", "rss": 10, "anon": 2},
                           {"step": "import torch", "rss": 500, "anon": 280}]}  # fmt: skip
    section = render_section(results)
    assert "| mobilenet_v2 | 2 | 1600 | 1200 | 2400 | 1200 |" in section
    assert "| Java frontend | - | 250 | 250 | 250 | 250 |" in section
    assert "| **total RSS** | | **2750** | **2125** | **4000** | **2125** |" in section  # 250 + 1600 + 900
    assert "Total RSS at idle: -22.7 %" in section and "**met**" in section
    assert "| import torch | 500 | 280 | +278 |" in section
    results["idle"]["after"] = server(0.9)
    assert "**MISSED**" in render_section(results)

    mine = process_memory(os.getpid())
    assert mine["rss"] >= mine["pss"] >= mine["uss"] > 0
    for pid, name, session in ((10, "python", 77), (11, "java", 78), (12, "java", 77)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S 1 {session} {session} " + "0 " * 40)
    assert frontend_pid(77, proc=tmp_path) == 12


def test_the_ceiling_section_splits_each_requests_cpu_and_needs_every_run():
    from scripts.bench.ceiling import FRONTEND_VARIANTS, MODELS, render_section

    def entry(run: int, model: str, rate: float) -> dict:
        ours = {"req_per_s": rate, "frontend_cpu_ms": 1.2, "worker_cpu_ms": 9.0, "client_cpu_ms": 0.8}
        return {"run": run, "model": model, "ours": ours, "ceiling": {"served": 200.0, "workers": 2, "threads": 1}}

    frontend = [{"round": 1, "variant": v, "req_per_s": 150.0, "frontend_cpu_ms": 1.1, "p99_ms": 80.0}
                for v in FRONTEND_VARIANTS]  # fmt: skip
    results = {"date": "2026-11-22", "machine": "test", "cores": 2, "duration_s": 15, "warmup_s": 120,
               "frontend": frontend,
               "runs": [entry(run, model, 170.0) for run in (1, 2, 3) for model in MODELS]}  # fmt: skip
    section = render_section(results)
    # model alone: 2 processes x 1 thread / 200 img/s = 10 ms of CPU per image
    assert f"| 2 | {MODELS[0]} | 200.0 | 170.0 | 0.85x | 1.20 | 9.00 | 0.80 | 10.00 |" in section
    assert "**met**" in section
    # 0.8x of 200 img/s on 2 cores: 12.5 ms of CPU per request in all
    assert "may cost 12.5 ms of CPU in all" in section and "leaving 2.5 ms" in section
    assert "| as configured | 150.0 | 150.0 | 1.10 | 80 |" in section
    results["runs"][4]["ours"]["req_per_s"] = 150.0  # one run of one model at 0.75x
    assert "**MISSED**" in render_section(results)


def test_the_peers_section_pairs_each_cycle_and_explains_the_ratio_by_cpu():
    from scripts.bench.peers import CONCURRENCY, render_section

    def point(server: str, cycle: int, clients: int, rate: float, cpu: float) -> dict:
        frontend = 2.0 if server == "ours" else 0.0  # a peer's CPU is all "workers" (scripts/bench/cpu.py)
        measured = {"server": server, "cycle": cycle, "concurrency": clients, "req_per_s": rate, "p50_ms": 80.0,
                    "frontend_cpu_ms": frontend, "worker_cpu_ms": cpu - frontend, "client_cpu_ms": 0.3,
                    "mean_ms": 20.0 if server == "ours" else 19.0 + cycle}  # fmt: skip
        if server == "ours":  # TorchServe's and the handler's metrics
            stages = {"decode": 1.0, "preprocess": 0.5, "forward": 14.0, "postprocess": 0.2}
            measured |= {"queue_ms": 1.2, "inference_ms": 17.0, "stage_ms": stages}
        return measured

    # cycle 1: ours 100 vs 90 req/s (1.11x), cycle 2: 110 vs 90 (1.22x), cycle 3: 120 vs 100 (1.20x)
    pairs = [(1, 100.0, 90.0), (2, 110.0, 90.0), (3, 120.0, 100.0)]
    points = [p for cycle, ours, peer in pairs for c in CONCURRENCY
              for p in (point("ours", cycle, c, ours, 16.0), point("litserve", cycle, c, peer, 19.2))]  # fmt: skip
    ceiling = {"workers": 2, "threads": 1, "served": 160.0}  # 12.5 ms of CPU per image
    slower = {**ceiling, "served": 100.0}  # a cycle on a slower minute: the median is taken
    model = {"litserve_settings": [4, 0.002], "ceilings": [ceiling, slower, ceiling], "points": points}
    results = {"date": "2026-11-22", "machine": "test", "cores": 2, "cycles": 3, "slice_s": 10, "warmup_s": 120,
               "models": {"mobilenet_v2": model}}  # fmt: skip
    section = render_section(results)
    assert (
        "| mobilenet_v2 | 8 | 110.0 | 90.0 | **1.20x** (1.11-1.22) | 80 / 80 | 16.00 (2.00 + 14.00) | 19.20 |"
        in section
    )
    assert "**met**" in section and "max_batch_size 4, batch_timeout 2 ms" in section
    assert "Why" not in section  # every target met: nothing to explain
    assert "mobilenet_v2** 80.0 ms (ours) vs 80.0 ms (LitServe): met" in section  # a lone client's p50
    # 20.0 = TorchServe's 17.0 from job to answer (1.2 queued, 15.8 to the worker and back, 15.7 of it in
    # the handler) + 3.0 outside it; LitServe's median mean 21.0
    assert (
        "Mean 20.0 ms ours: 1.2 in TorchServe's job queue (a lone request waits there the 1 ms maxBatchDelay "
        "for company), 15.8 from the frontend to the worker and back -- our handler 15.7 (decode 1.0, "
        "preprocess 0.5, forward 14.0, postprocess 0.2), TorchServe's Python worker loop, its socket and the "
        "metric lines 0.1 -- and 3.0 in the frontend's HTTP handling and the network. LitServe: mean 21.0 ms "
        "(a lone request waits its 2 ms batch_timeout likewise), +1.0 ms against ours." in section
    )
    for p in points:  # LitServe's workers' counters, as a run since they exist records them
        if p["server"] == "litserve":
            p["stage_ms"] = {"decode": 2.0, "forward": 13.0}
    # LitServe's median mean 21.0 = decoding 2.0 + predict 13.0 + 6.0 elsewhere
    assert (
        "LitServe: mean 21.0 ms: decoding, resizing and cropping 2.0, predict 13.0 (the forward pass, softmax and "
        "top-5), and 6.0 elsewhere (its 2 ms batch_timeout, the queues between its API server and its worker, "
        "HTTP). The forward pass: ours 14.0 ms, LitServe's 13.0; everything else: ours 6.0 ms, LitServe's 8.0."
        in render_section(results)
    )
    points[8]["req_per_s"] = 100.0  # cycle 3 at 8 clients: 1.00x; the median drops to 1.11x
    section = render_section(results)
    assert "**MISSED**" in section and "- **mobilenet_v2** (8 clients, 1.11x)" in section
    # 1.2x of LitServe's 19.2 ms per request allows 16.0; the model alone takes 12.5
    assert "allows ours 16.0 ms" in section and "takes 12.5 ms per image" in section
    assert "We spend 3.5 ms beyond the model: TorchServe's Java frontend 2.0 ms and the workers 1.5 ms" in section
    assert "ours 1.60, LitServe 1.73 of 2" in section
    # 16.0 ms per request is within what 1.2x allows: the shortfall is idle cores, not CPU
    assert "Within the allowance: by CPU per request alone ours would be 1.20x" in section
    for p in points:
        if p["server"] == "ours" and p["concurrency"] == 8:
            p["worker_cpu_ms"] += 1.0  # 17.0 ms per request: over the allowance
    section = render_section(results)
    assert "We spend 4.5 ms beyond the model" in section and "Within the allowance" not in section


def test_make_bench_explains_a_lone_clients_rows_with_its_own_points():
    def lone(server: str, mean: float, stages: dict, **torchserve) -> dict:
        return {"server": server, "model": "mobilenet_v2", "image": "small", "concurrency": 1, "requests": 400,
                "req_per_s": 40.0, "p50_ms": mean, "p90_ms": mean, "p99_ms": mean, "errors": 0, "mean_ms": mean,
                "stage_ms": stages, **torchserve}  # fmt: skip

    ours = lone("ours", 24.0, {"decode": 1.0, "preprocess": 0.6, "forward": 17.0, "postprocess": 0.2},
                queue_ms=1.2, inference_ms=22.0)  # fmt: skip
    peer = lone("litserve", 22.0, {"decode": 1.5, "forward": 15.0})
    measured = {**results(60.0), "litserve": {"mobilenet_v2": {"tried": [], "best": [4, 0.002]}}}
    measured["points"] += [ours, peer, lone("fastapi", 25.0, {"decode": 3.0, "forward": 19.0})]
    document = render_markdown(measured)
    assert (
        "The FastAPI app: mean 25.0 ms: decoding and preprocessing (PIL) 3.0, the forward pass 19.0 (the eager "
        "model, softmax and top-5), and 3.0 elsewhere (uvicorn, HTTP); everything but the forward pass 6.0." in document
    )
    assert "A lone client in this run" in document
    assert (
        "- **mobilenet_v2**: Mean 24.0 ms ours: 1.2 in TorchServe's job queue (a lone request waits there the 1 ms"
        in document
    )
    assert "The forward pass: ours 17.0 ms, LitServe's 15.0; everything else: ours 7.0 ms, LitServe's 7.0." in document
    del measured["litserve"]  # no LitServe in the run: nothing to compare
    assert "A lone client in this run" not in render_markdown(measured)


def test_the_batch_delay_section_explains_a_lone_client_with_the_runs_own_metrics():
    from scripts.bench.batch_delay import DELAYS, render_model

    def measured(delay: int, clients: int) -> dict:
        torchserve = {
            "queue_ms": 1.2,
            "inference_ms": 16.0,
            "stage_ms": {"decode": 1.0, "preprocess": 0.6, "forward": 13.0, "postprocess": 0.2},
        }
        return {"delay_ms": delay, "concurrency": clients, "p50_ms": 19.0 + delay, "p99_ms": 30.0, "mean_ms": 19.0,
                "req_per_s": 130.0, **torchserve}  # fmt: skip

    peers = {"fastapi": {"p50_ms": 26.0}, "litserve": {"p50_ms": 19.5, "mean_ms": 19.5,
                                                       "stage_ms": {"decode": 1.5, "forward": 12.0}}}  # fmt: skip
    entry = {"configured_ms": 1, "litserve_settings": [4, 0.002], "peers": peers,
             "points": [measured(delay, clients) for delay in DELAYS for clients in (1, 32)]}  # fmt: skip
    text = "\n".join(render_model("mobilenet_v2", entry))
    assert "ours 20.0 ms (as configured), the FastAPI app 26.0 ms, LitServe 19.5 ms" in text and "**MISSED**" in text
    assert "The forward pass: ours 13.0 ms, LitServe's 12.0; everything else: ours 6.0 ms, LitServe's 7.5." in text
    for point in entry["points"]:  # a run from before TorchServe's metrics were read: the verdict alone
        del point["stage_ms"]
    assert "The forward pass" not in "\n".join(render_model("mobilenet_v2", entry))


def test_make_bench_explains_a_throughput_below_litserves_with_the_runs_own_cpu():
    def loaded(server: str, req_per_s: float, frontend: float, workers: float) -> dict:
        point = results(req_per_s)["points"][0]
        return {**point, "server": server, "frontend_cpu_ms": frontend, "worker_cpu_ms": workers}

    measured = {
        **results(60.0),
        "machine": "x86_64, 2 CPUs",
        "litserve": {"face_pixelizer": {"tried": [], "best": [4, 0.002]}},
    }
    # ours 33 req/s at 2 + 56 ms of CPU per request; LitServe 29 req/s at 67; the model alone 26.7 ms per image
    measured["points"] = [loaded("ours", 33.0, 2.0, 56.0), loaded("litserve", 29.0, 0.0, 67.0)]
    document = render_markdown(measured)
    assert "- **face_pixelizer** (8 clients, 1.14x): LitServe spends 67.0 ms of CPU per request" in document
    assert "allows ours 55.8 ms" in document and "We spend 31.3 ms beyond the model" in document
    assert "ours 1.91, LitServe 1.94 of 2" in document
    measured["points"][0]["req_per_s"] = 36.0  # 1.24x: met, nothing to explain
    assert "Where ours is below" not in render_markdown(measured)


def test_a_model_measured_slower_than_the_servers_is_not_subtracted_from_them():
    """The ceiling is measured minutes before the servers: where the machine drifted so far that
    the model alone cost more CPU than a whole request, no negative 'rest' is reported."""
    from scripts.bench.report import ceiling_cpu_ms, cpu_shortfall

    s = {"ours_rps": 80.0, "litserve_rps": 73.0, "ratio": 1.096, "ratios": [1.096], "frontend": 1.4,
         "workers": 23.7, "ours_cpu": 25.1, "litserve_cpu": 26.3}  # fmt: skip
    text = cpu_shortfall("resnet18", 8, s, 26.6, 2, 1.2)
    assert "by CPU per request alone ours is 1.05x" in text and "no less than a whole request costs" in text
    assert "beyond the model" not in text and " -" not in text
    measured = {"workers": 1, "threads": 2, "served": 75.0, "cpu_ms_per_image": 19.1}
    assert ceiling_cpu_ms(measured) == 19.1  # measured CPU, not 2 threads x 13.3 ms of wall time
    assert round(ceiling_cpu_ms({k: v for k, v in measured.items() if k != "cpu_ms_per_image"}), 1) == 26.7
