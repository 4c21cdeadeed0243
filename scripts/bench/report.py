"""Turn scripts/bench/endtoend.py's results into docs/benchmarks.md (tables, targets, where the
time goes) and docs/benchmarks.png (throughput and p99 latency against concurrency)."""

import json
import os
import platform
import re
import statistics
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from scripts.zoo import get_model

# The targets of the performance work (issue 6), on this machine.
BUILTIN_FACTOR = 2.0  # classifiers: at least twice the built-in handler's req/s at c=8 and c=32
CEILING_FACTOR = 0.7  # at least 0.7x the compiled model alone at the served batch size
LATENCY_SLACK = 1.10  # c=1: p50 no worse than the built-in handler's + 10 %
LITSERVE_FACTOR = 1.2  # ours >= 1.2x LitServe's req/s at 8 and 32 clients


# Sections written by the side-by-side benchmarks (scripts/bench/<name>.py) live between
# markers and survive a rewrite of the rest of docs/benchmarks.md by scripts/bench/endtoend.py.
SECTIONS = (
    "scaling",
    "metrics_cost",
    "video",
    "replicas",
    "batch_delay",
    "memory",
    "ceiling",
    "peers",
    "handler_speed",
)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: written by scripts/bench/{name}.py -->", f"<!-- /{name} -->"


def with_section(document: str, name: str, body: str) -> str:
    """`document` with section `name` holding `body` (replaced, or appended if absent)."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in document and end in document:
        before, rest = document.split(begin, 1)
        return before + section + rest.split(end, 1)[1]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def sections_of(document: str) -> dict[str, str]:
    """{name: body} of the marked sections in `document`."""
    found = {}
    for name in SECTIONS:
        begin, end = markers(name)
        if begin in document and end in document:
            found[name] = document.split(begin, 1)[1].split(end, 1)[0]
    return found


def point(results: dict, server: str, model: str, concurrency: int, image: str = "small") -> dict | None:
    for candidate in results["points"]:
        if (candidate["server"], candidate["model"], candidate["concurrency"], candidate["image"]) == (
            server,
            model,
            concurrency,
            image,
        ):
            return candidate
    return None


def targets(results: dict) -> Iterator[tuple[str, str, bool]]:
    """(target, measured, met) for every target that this run measured."""
    for model, ceiling in results["ceilings"].items():
        ours_c1, builtin_c1 = point(results, "ours", model, 1), point(results, "built-in", model, 1)
        for concurrency in (8, 32):
            ours, builtin = point(results, "ours", model, concurrency), point(results, "built-in", model, concurrency)
            if ours and builtin:
                ratio = ours["req_per_s"] / max(builtin["req_per_s"], 1e-9)
                yield (
                    f"{model}, c={concurrency}: >= {BUILTIN_FACTOR:g}x built-in req/s",
                    f"{ours['req_per_s']:.1f} / {builtin['req_per_s']:.1f} = {ratio:.1f}x",
                    ratio >= BUILTIN_FACTOR,
                )
            if ours and (builtin or concurrency == 8):
                ratio = ours["req_per_s"] / ceiling["served"]
                yield (
                    f"{model}, c={concurrency}: >= {CEILING_FACTOR:g}x ceiling (batch {ceiling['batch']})",
                    f"{ours['req_per_s']:.1f} / {ceiling['served']:.1f} = {ratio:.2f}x",
                    ratio >= CEILING_FACTOR,
                )
        if ours_c1 and builtin_c1:
            yield (
                f"{model}, c=1: p50 <= built-in p50 + 10 %",
                f"{ours_c1['p50_ms']:.1f} ms vs {builtin_c1['p50_ms']:.1f} ms",
                ours_c1["p50_ms"] <= builtin_c1["p50_ms"] * LATENCY_SLACK,
            )
        yield from peer_targets(results, model)


def peer_targets(results: dict, model: str) -> Iterator[tuple[str, str, bool]]:
    """Against the peers a user would pick instead: >= LITSERVE_FACTOR x LitServe's req/s at
    8 and 32 clients, and a lone client's p50 no worse than LitServe's or the FastAPI app's."""
    for concurrency in (8, 32):
        ours, peer = point(results, "ours", model, concurrency), point(results, "litserve", model, concurrency)
        if ours and peer:
            ratio = ours["req_per_s"] / max(peer["req_per_s"], 1e-9)
            yield (
                f"{model}, c={concurrency}: >= {LITSERVE_FACTOR:g}x LitServe req/s",
                f"{ours['req_per_s']:.1f} / {peer['req_per_s']:.1f} = {ratio:.2f}x",
                ratio >= LITSERVE_FACTOR,
            )
    ours = point(results, "ours", model, 1)
    for server, name in (("fastapi", "the FastAPI app"), ("litserve", "LitServe")):
        peer = point(results, server, model, 1)
        if ours and peer:
            yield (
                f"{model}, c=1: p50 <= {name}'s p50",
                f"{ours['p50_ms']:.1f} ms vs {peer['p50_ms']:.1f} ms",
                ours["p50_ms"] <= peer["p50_ms"],
            )


HANDLER_STAGES = ("decode", "preprocess", "forward", "postprocess")  # our handler's, in order


def lone_client_breakdown(ours: list[dict], litserve: list[dict], delay_ms: float, timeout_ms: float) -> str:
    """Where a lone client's request spends its time, ours and LitServe's, in words: each
    value the median over the points given (the cycles of a side-by-side run, or one point).
    Ours from TorchServe's metrics and our handler's; LitServe's from its workers' counters
    (scripts/bench/stage_counters.py), where the points have them."""

    def median(points: list[dict], value) -> float:
        return statistics.median(value(p) for p in points)

    mean = median(ours, lambda p: p["mean_ms"])
    # TorchServe's inference latency runs from the request's job to its answer: the queue's wait included
    queue, job = median(ours, lambda p: p["queue_ms"]), median(ours, lambda p: p["inference_ms"])
    round_trip = job - queue
    stages = {stage: median(ours, lambda p, stage=stage: p["stage_ms"][stage]) for stage in HANDLER_STAGES}
    handler = sum(stages.values())
    peer = median(litserve, lambda p: p["mean_ms"])
    text = (
        f"Mean {mean:.1f} ms ours: {queue:.1f} in TorchServe's job queue (a lone request waits there the "
        f"{delay_ms:g} ms maxBatchDelay for company), {round_trip:.1f} from the frontend to the worker and back -- "
        f"our handler {handler:.1f} ({', '.join(f'{name} {ms:.1f}' for name, ms in stages.items())}), "
        f"TorchServe's Python worker loop, its socket and the metric lines {round_trip - handler:.1f} -- and "
        f"{mean - job:.1f} in the frontend's HTTP handling and the network. LitServe: mean {peer:.1f} ms"
    )
    if not all(p.get("stage_ms") for p in litserve):  # a run from before LitServe's counters
        return text + (
            f" (a lone request waits its {timeout_ms:g} ms batch_timeout likewise), {peer - mean:+.1f} ms against ours."
        )
    waits = f"its {timeout_ms:g} ms batch_timeout" if timeout_ms else "no batch_timeout: batching off"
    decode, forward = (median(litserve, lambda p, stage=stage: p["stage_ms"][stage]) for stage in ("decode", "forward"))
    return text + (
        f": decoding, resizing and cropping {decode:.1f}, predict {forward:.1f} (the forward pass, softmax and top-5), "
        f"and {peer - decode - forward:.1f} elsewhere ({waits}, the queues between its "
        f"API server and its worker, HTTP). The forward pass: ours {stages['forward']:.1f} ms, LitServe's "
        f"{forward:.1f}; everything else: ours {mean - stages['forward']:.1f} ms, LitServe's {peer - forward:.1f}."
    )


def fastapi_split(peer: dict | None) -> str:
    """The FastAPI app's lone request in words, where its counters were read (else nothing)."""
    if not (peer and peer.get("stage_ms")):
        return ""
    mean, decode, forward = peer["mean_ms"], peer["stage_ms"]["decode"], peer["stage_ms"]["forward"]
    return (
        f" The FastAPI app: mean {mean:.1f} ms: decoding and preprocessing (PIL) {decode:.1f}, the forward pass "
        f"{forward:.1f} (the eager model, softmax and top-5), and {mean - decode - forward:.1f} elsewhere (uvicorn, "
        f"HTTP); everything but the forward pass {mean - forward:.1f}."
    )


def lone_client_lines(results: dict) -> list[str]:
    """Where a lone client's request went in this run, ours and LitServe's, per classifier
    both served: the numbers behind the c=1 rows of the targets."""
    lines = []
    for model, tuning in results.get("litserve", {}).items():
        ours, peer = point(results, "ours", model, 1), point(results, "litserve", model, 1)
        if ours and peer and ours.get("stage_ms") and ours.get("queue_ms") is not None:
            delay = yaml.safe_load(get_model(model).config_file.read_text())["maxBatchDelay"]
            line = f"- **{model}**: " + lone_client_breakdown([ours], [peer], delay, tuning["best"][1] * 1000)
            lines.append(line + fastapi_split(point(results, "fastapi", model, 1)))
    if not lines:
        return []
    return [
        "",
        "A lone client in this run, where a request's time goes (means; ours from TorchServe's and the",
        "handler's own metrics, the peers' from their processes' counters). Ours and LitServe run the same",
        "compiled file on the same threads, so a difference in their forward pass is the machine's speed in",
        "the minutes between their measurements, not the server:",
        "",
        *lines,
    ]


def cpu_shortfall(model: str, clients: int, s: dict, model_ms: float, cores: int, target: float) -> str:
    """Why ours is below `target` x LitServe's req/s at `clients`, in CPU per request: over what
    the target allows, or within it and short of it in cores kept busy. `s`: req/s, CPU ms
    per request (ours: frontend + workers) and the ratios of the cycles measured (one or more)."""
    allowed = s["litserve_cpu"] / target
    busy = (
        f"Cores kept busy (req/s x CPU per request): ours {s['ours_rps'] * s['ours_cpu'] / 1000:.2f}, LitServe "
        f"{s['litserve_rps'] * s['litserve_cpu'] / 1000:.2f} of {cores}: a core one server leaves idle "
        "(a worker waiting for its next batch) serves no request."
    )
    if model_ms >= min(s["ours_cpu"], s["litserve_cpu"]):
        return (
            f"- **{model}** ({clients} clients, {s['ratio']:.2f}x): LitServe spends {s['litserve_cpu']:.1f} ms of CPU "
            f"per request and ours {s['ours_cpu']:.1f} (TorchServe's Java frontend {s['frontend']:.1f}, the workers "
            f"{s['workers']:.1f}), so {target:g}x its throughput would allow ours {allowed:.1f} ms; by CPU per request "
            f"alone ours is {s['litserve_cpu'] / s['ours_cpu']:.2f}x. The compiled model alone measured "
            f"{model_ms:.1f} ms per image in this run, no less than a whole request costs a server: the model is "
            "nearly all of either server's CPU, so what is left to either to save is within the machine's drift "
            "between the measurements. " + busy
        )
    ours = (
        f"We spend {s['ours_cpu'] - model_ms:.1f} ms beyond the model: TorchServe's Java frontend "
        f"{s['frontend']:.1f} ms and the workers {s['workers'] - model_ms:.1f} ms (TorchServe's Python worker loop, "
        "decoding, preprocessing, the answer, metrics, the drift test)."
    )
    head = (
        f"- **{model}** ({clients} clients, {s['ratio']:.2f}x): LitServe spends {s['litserve_cpu']:.1f} ms of CPU "
        f"per request, so {target:g}x its throughput allows ours {allowed:.1f} ms. The compiled model alone takes "
        f"{model_ms:.1f} ms per image (the same file, processes, threads and batch), which leaves LitServe "
        f"{s['litserve_cpu'] - model_ms:.1f} ms for everything else and would leave us {allowed - model_ms:.1f}. "
    )
    if s["ours_cpu"] > allowed:
        return head + ours + " " + busy
    ratios = s["ratios"]
    spread = f"the cycles' spread ({ratios[0]:.2f}-{ratios[-1]:.2f}x)" if len(ratios) > 1 else "the machine's drift"
    return (
        head
        + ours
        + f" Within the allowance: by CPU per request alone ours would be {s['litserve_cpu'] / s['ours_cpu']:.2f}x; "
        + f"the rest is idle time and {spread}. "
        + busy
    )


def ceiling_cpu_ms(ceiling: dict) -> float:
    """CPU ms per image of the compiled model alone on the served processes, threads and batch:
    measured where the run measured it, else threads x wall time (an upper bound: a thread
    waiting for another at a layer's end does not spend CPU)."""
    if "cpu_ms_per_image" in ceiling:
        return ceiling["cpu_ms_per_image"]
    return 1000 * ceiling["workers"] * ceiling["threads"] / ceiling["served"]


def machine_cores(results: dict) -> int:
    """The cores of the machine a make bench run measured (older runs say it in `machine` only)."""
    return results.get("cores") or int(re.search(r"(\d+) CPUs", results["machine"]).group(1))


def litserve_shortfall_lines(results: dict) -> list[str]:
    """Each loaded point of this run below LITSERVE_FACTOR x LitServe's req/s, explained with
    the run's own CPU counters (cpu_shortfall)."""
    lines = []
    for model in results.get("litserve", {}):
        for clients in (8, 32):
            ours, peer = point(results, "ours", model, clients), point(results, "litserve", model, clients)
            if not (ours and peer and ours.get("worker_cpu_ms") is not None and peer.get("worker_cpu_ms")):
                continue
            ratio = ours["req_per_s"] / peer["req_per_s"]
            if ratio >= LITSERVE_FACTOR:
                continue
            s = {
                "ours_rps": ours["req_per_s"], "litserve_rps": peer["req_per_s"], "ratio": ratio, "ratios": [ratio],
                "frontend": ours["frontend_cpu_ms"], "workers": ours["worker_cpu_ms"],
                "ours_cpu": ours["frontend_cpu_ms"] + ours["worker_cpu_ms"],
                "litserve_cpu": peer["frontend_cpu_ms"] + peer["worker_cpu_ms"],
            }  # fmt: skip
            model_ms = ceiling_cpu_ms(results["ceilings"][model])
            lines.append(cpu_shortfall(model, clients, s, model_ms, machine_cores(results), LITSERVE_FACTOR))
    if not lines:
        return []
    return [
        "",
        f"Where ours is below {LITSERVE_FACTOR:g}x LitServe's req/s in this run, in CPU per request (each server's "
        "processes' CPU time over the point, `scripts/bench/cpu.py`; the load generator's own apart) against the "
        "compiled model alone (the ceilings below):",
        "",
        *lines,
    ]


def summary_lines(results: dict) -> list[str]:
    lines = [
        f"{p['server']:8} {p['model']:15} {p['image']:5} c={p['concurrency']:<3} {p['req_per_s']:7.1f} req/s"
        f"  p50 {p['p50_ms']:7.1f}  p99 {p['p99_ms']:7.1f} ms  errors {p['errors']}"
        for p in results["points"]
    ]
    lines += [
        f"ceiling {model}: {c['served']:.1f} img/s at batch {c['batch']}" for model, c in results["ceilings"].items()
    ]
    lines += [f"{'MET ' if met else 'MISS'} {target}: {measured}" for target, measured, met in targets(results)]
    return lines


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def render_markdown(results: dict) -> str:
    models = list(results["ceilings"])
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` (`scripts/bench/endtoend.py`) on {results['date']} on this project's CI-class",
        f"machine ({results['machine']}), everything in one run: servers one after the other, each point",
        f"{results['duration_s']:.0f} s of closed-loop clients (asyncio, raw HTTP keep-alive, on the same 2 cores",
        "as the server) after a short warm-up, each model in a TorchServe of its own. Photos: *small* =",
        "skimage's cat, 451x300 JPEG;",
        "*large* = skimage's retina photo, 1411x1411 JPEG. (The face pixelizer finds the cat's face in",
        "the small photo, so its answers take the whole anonymising path: pixelation and JPEG encoding.)",
        "Servers:",
        "",
        "- **ours**: this repo's archives and `config.properties` (TorchServe 0.12);",
        "- **built-in**: the same compiled TorchScript file archived with TorchServe's `image_classifier`",
        "  handler and TorchServe's defaults (batch 1, one worker per core, its own logging);",
        "- **fastapi**: `scripts/bench/fastapi_app.py`, one eager torchvision model in a single uvicorn process,",
        "  PIL preprocessing, one image per request;",
        "- **litserve**: `scripts/bench/litserve_app.py`, LitServe serving the same compiled file with its own",
        "  dynamic batching, as many inference workers and threads each as ours, torchvision.io decoding; the",
        "  photo sent as a multipart form (LitServe parses JSON or forms only); its batching tuned below;",
        "- **ceiling**: the compiled file alone (loaded as the handler loads it) on ready-made input tensors,",
        "  at the served batch size and thread count, in as many processes at once as the model has workers.",
        "",
        "![throughput and p99 latency against concurrency](benchmarks.png)",
        "",
        "## Targets",
        "",
    ]
    lines += markdown_table(
        ["target", "measured", "met"], [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(results)]
    )
    lines += litserve_shortfall_lines(results)
    lines += lone_client_lines(results)
    lines += ["", "## Throughput and latency", ""]
    order = sorted(results["points"], key=lambda p: (p["model"], p["image"] != "small", p["server"], p["concurrency"]))
    rows = [
        [p["model"], p["server"], p["image"], p["concurrency"], f"{p['req_per_s']:.1f}", f"{p['p50_ms']:.0f}",
         f"{p['p90_ms']:.0f}", f"{p['p99_ms']:.0f}", p["errors"]]
        for p in order
    ]  # fmt: skip
    lines += markdown_table(
        ["model", "server", "photo", "clients", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows
    )
    lines += ["", "## Ceilings: the compiled model alone", ""]
    rows = [
        [model, c["compiler"], c["workers"], c["threads"], c["batch"], f"{c['b1']:.1f}", f"{c['served']:.1f}"]
        for model, c in results["ceilings"].items()
    ]
    header = [
        "model",
        "compiler",
        "processes",
        "threads each",
        "served batch",
        "img/s at batch 1",
        "img/s at served batch",
    ]
    lines += markdown_table(header, rows)
    if "compile_targets" in results:
        lines += [
            "",
            "## Compile targets: TorchScript vs torch.export + AOTInductor",
            "",
            "img/s of the compiled model alone per batch size, at each model's served thread count",
            "(TorchScript: scripted, frozen, and",
            "`optimize_for_inference` at load; AOTInductor: weights frozen in). The model table",
            "(`scripts/zoo.py`) uses the faster one; its batch size in each model's YAML follows the same",
            "numbers.",
            "",
        ]
        rows = []
        for model, targets_ in results["compile_targets"].items():
            for compiler in ("torchscript", "aoti"):
                speeds = ", ".join(f"b{b}: {v:.1f}" for b, v in targets_[compiler].items())
                rows.append([model, compiler + (" (chosen)" if targets_["chosen"] == compiler else ""), speeds])
        lines += markdown_table(["model", "target", "img/s"], rows)
    lines += litserve_section(results)
    lines += breakdown_section(results, models)
    lines += logging_section(results, models)
    lines += [
        "",
        "## GPU",
        "",
        "`make bench` runs on this CPU machine. On a GPU the handlers decode a batch's JPEGs in one call on the",
        "model's device (`jpeg_decoder: batched`, nvJPEG on CUDA, the default there), preprocess on the device,",
        "copy through pinned memory, run `channels_last`, and serve bf16/fp16 builds (`make archive PRECISION=fp16",
        "DEVICE=cuda`, parity within the tolerances in `scripts/families/classifiers.py`, `detectors.py`,",
        "`faces.py`). `python -m scripts.bench.handler_speed --device cuda` measures the handler (a fake context,",
        "no Java) against the model alone for resnet50, yolov5s and face_pixelizer at batch 1/8/32, by compile",
        "target and precision; its last run on a GPU is the section *GPU: the handler against the model alone*",
        "below. Target: handler >= 0.6x model-only at batch 32.",
    ]
    if "handler_vs_model" in results:
        lines += ["", "The same script on this CPU (for reference; batch 32 omitted on CPU):", ""]
        rows = [
            [
                r["model"],
                r["batch"],
                f"{r['model_img_per_s']:.1f}",
                f"{r['handler_img_per_s']:.1f}",
                f"{r['ratio']:.2f}",
            ]
            for r in results["handler_vs_model"]
        ]
        lines += markdown_table(["model", "batch", "model-only img/s", "handler img/s", "ratio"], rows)
    return "\n".join(lines) + "\n"


def litserve_section(results: dict) -> list[str]:
    """LitServe's batching settings tried at 8 clients, and the one measured."""
    if not results.get("litserve"):
        return []
    lines = [
        "",
        "## LitServe's batching, tuned",
        "",
        "Each setting served by its own LitServe and loaded by 8 clients; the best (bold) is the one measured",
        "above. Batch 1 is LitServe without batching.",
        "",
    ]
    rows = []
    for model, tuning in results["litserve"].items():
        for tried in tuning["tried"]:
            chosen = [tried["max_batch_size"], tried["batch_timeout"]] == list(tuning["best"])
            rate = f"{tried['req_per_s']:.1f}"
            rows.append([model, tried["max_batch_size"], f"{tried['batch_timeout'] * 1000:g}",
                         f"**{rate}**" if chosen else rate, f"{tried['p50_ms']:.0f}"])  # fmt: skip
    return lines + markdown_table(["model", "max_batch_size", "batch_timeout ms", "req/s (c=8)", "p50 ms"], rows)


def breakdown_section(results: dict, models: list[str]) -> list[str]:
    lines = [
        "",
        "## Where the time goes",
        "",
        "Inside our handler (driven in-process at the served batch size, ms per image: forward includes",
        "stacking the batch), and what TorchServe's own counters (Prometheus metrics API) say per request",
        "at 8 clients: *queue* is the wait for a free worker, *in TorchServe* the whole time from the",
        "frontend receiving the request to it answering (queue included). A request costs the machine",
        "*ms per request* (1000 / req/s): the handler's stages, plus the frontend's and the client's work",
        "on the same two cores.",
        "",
    ]
    rows = []
    for model in models:
        stages = results["breakdown"][model]
        ours = point(results, "ours", model, 8)
        per_request = 1000 / ours["req_per_s"] if ours else float("nan")
        rows.append(
            [model, stages["batch"]]
            + [f"{stages.get(name, 0):.2f}" for name in ("decode", "preprocess", "forward", "postprocess")]
            + [
                f"{ours['queue_ms']:.1f}" if ours and ours["queue_ms"] is not None else "-",
                f"{ours['inference_ms']:.1f}" if ours and ours["inference_ms"] is not None else "-",
                f"{ours['p50_ms']:.1f}" if ours else "-",
                f"{per_request:.1f}",
            ]
        )
    lines += markdown_table(
        ["model", "batch", "decode", "preprocess", "forward", "postprocess", "queue (c=8)", "in TorchServe (c=8)",
         "p50 (c=8)", "ms per request at c=8"],
        rows,
    )  # fmt: skip
    return lines + shortfall_lines(results, models)


STAGES = ("decode", "preprocess", "postprocess")  # the handler's stages around the forward pass


def shortfall_lines(results: dict, models: list[str]) -> list[str]:
    """For each model below CEILING_FACTOR at 8 clients, where its time goes, in this run's numbers:
    a worker's wall time per request, split into the model, the handler's other stages, and the
    rest (TorchServe's frontend and the benchmark's client, on the same cores)."""
    lines = []
    for model in models:
        ceiling, stages = results["ceilings"][model], results["breakdown"][model]
        ours = point(results, "ours", model, 8)
        if not ours or ours["req_per_s"] >= CEILING_FACTOR * ceiling["served"]:
            continue
        workers = ceiling["workers"]
        per_request = 1000 * workers / ours["req_per_s"]  # ms of one worker's wall time per request
        alone = 1000 * workers / ceiling["served"]  # ms per image for the model alone, same share of the machine
        others = {stage: stages.get(stage, 0.0) for stage in STAGES}
        handler = stages.get("forward", 0.0) + sum(others.values())
        needed = alone / CEILING_FACTOR
        who = "Its worker" if workers == 1 else f"Each of its {workers} workers"
        share = f"{_count(ceiling['threads'], 'thread')}, batch {ceiling['batch']}"
        stage_list = ", ".join(f"{label} {value:.2f}" for label, value in others.items())
        lines += [
            "",
            f"**Why {model} misses {CEILING_FACTOR:g}x its ceiling at 8 clients.** {who} spends"
            f" {per_request:.1f} ms of wall time per request; the model alone spends {alone:.1f} ms per image on"
            f" the same share of the machine ({share}), so the target allows {needed:.1f} ms. Inside the handler"
            f" the forward pass takes {stages.get('forward', 0.0):.1f} ms, and {stage_list} ms (postprocess"
            f" includes encoding an image answer) add {sum(others.values()):.1f} ms: the handler alone takes"
            f" {handler:.1f} ms per image, {alone / handler:.2f}x the ceiling. The remaining"
            f" {max(per_request - handler, 0.0):.1f} ms per request are TorchServe's frontend (HTTP parsing, the"
            " batch queue, copying each request and its answer over the worker's socket) and the benchmark's"
            " client, which share the machine's cores with the workers.",
        ]
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def logging_section(results: dict, models: list[str]) -> list[str]:
    rows = []
    for model in models:
        for server in ("ours", "built-in"):
            p = point(results, server, model, 8)
            if p and p["log_bytes_per_request"] is not None:
                rows.append([model, server, f"{p['log_bytes_per_request']:.0f}"])
    if not rows:
        return []
    lines = [
        "",
        "## Logging",
        "",
        "Bytes written to TorchServe's log directory per request at 8 clients. Ours logs nothing per",
        "request by default (`scripts/configs/log4j2.xml`; `-Dts.accessLog=info` turns the access log on).",
        "",
    ]
    return lines + markdown_table(["model", "server", "log bytes per request"], rows)


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["ceilings"])
    figure, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 7), squeeze=False)
    for column, model in enumerate(models):
        for server, style in (("ours", "o-"), ("built-in", "s--"), ("fastapi", "^:"), ("litserve", "d-.")):
            series = sorted(
                (
                    p
                    for p in results["points"]
                    if p["server"] == server and p["model"] == model and p["image"] == "small"
                ),
                key=lambda p: p["concurrency"],
            )
            if series:
                clients = [p["concurrency"] for p in series]
                axes[0][column].plot(clients, [p["req_per_s"] for p in series], style, label=server)
                axes[1][column].plot(clients, [p["p99_ms"] for p in series], style, label=server)
        axes[0][column].axhline(results["ceilings"][model]["served"], color="grey", lw=0.8, label="ceiling")
        axes[0][column].set_title(model)
        axes[0][column].set_ylabel("req/s")
        axes[1][column].set_ylabel("p99 latency (ms)")
        axes[1][column].set_yscale("log")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xticks([1, 8, 32], ["1", "8", "32"])
            axes[row][column].set_xlabel("concurrent clients")
        axes[0][column].legend(fontsize=8)
    figure.suptitle(f"451x300 JPEG, {results['machine']}, {results['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def machine() -> str:
    """This machine, as the reports name it."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def publish(name: str, markdown: str, results: dict, output: Path | None, json_path: Path | None) -> None:
    """Print a benchmark's section, write its raw results to `json_path` and the section
    into the benchmarks document `output` (None: leave the document alone)."""
    print(markdown)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    if output is not None:
        document = output.read_text() if output.exists() else ""
        output.write_text(with_section(document, name, markdown))
        print(f"wrote the {name} section of {output}")
