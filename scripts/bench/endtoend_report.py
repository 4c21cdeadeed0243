"""scripts/bench/endtoend.py's results as its section of docs/benchmarks.md (the targets,
throughput and latency, the ceilings, LitServe's tuning, where the time goes) and as
docs/benchmarks.png (throughput and p99 latency against concurrency)."""

from collections.abc import Iterator

from handlers.observers import STAGES
from scripts.bench.doc import markdown_table

# The performance targets, on this machine.
BUILTIN_FACTOR = 2.0  # classifiers: at least twice the built-in handler's req/s at 8 and 32 clients
CEILING_FACTOR = 0.7  # at least 0.7x the compiled model alone at the served batch size
LATENCY_SLACK = 1.10  # a lone client: p50 no worse than the built-in handler's + 10 %
LITSERVE_FACTOR = 1.2  # at least 1.2x LitServe's req/s at 8 and 32 clients
SERVERS = {"ours": "o-", "built-in": "s--", "fastapi": "^:", "litserve": "d-."}  # and their plot styles


def point(results: dict, server: str, model: str, concurrency: int, image: str = "small") -> dict | None:
    wanted = (server, model, concurrency, image)
    return next(
        (p for p in results["points"] if (p["server"], p["model"], p["concurrency"], p["image"]) == wanted), None
    )


def ratio_target(name: str, ours: dict | None, other: dict | None, factor: float) -> Iterator[tuple[str, str, bool]]:
    if ours and other:
        ratio = ours["req_per_s"] / max(other["req_per_s"], 1e-9)
        measured = f"{ours['req_per_s']:.1f} / {other['req_per_s']:.1f} = {ratio:.2f}x"
        yield f"{ours['model']}, c={ours['concurrency']}: >= {factor:g}x {name} req/s", measured, ratio >= factor


def targets(results: dict) -> Iterator[tuple[str, str, bool]]:
    """(target, measured, met) for every target this run measured."""
    for model, ceiling in results["ceilings"].items():
        for clients in (8, 32):
            ours = point(results, "ours", model, clients)
            yield from ratio_target("built-in", ours, point(results, "built-in", model, clients), BUILTIN_FACTOR)
            yield from ratio_target("LitServe", ours, point(results, "litserve", model, clients), LITSERVE_FACTOR)
            if ours:
                ratio = ours["req_per_s"] / ceiling["served"]
                yield (
                    f"{model}, c={clients}: >= {CEILING_FACTOR:g}x the model alone (batch {ceiling['batch']})",
                    f"{ours['req_per_s']:.1f} / {ceiling['served']:.1f} = {ratio:.2f}x",
                    ratio >= CEILING_FACTOR,
                )
        ours = point(results, "ours", model, 1)
        for server, name, slack in (
            ("built-in", "the built-in's + 10 %", LATENCY_SLACK),
            ("fastapi", "the FastAPI app's", 1.0),
            ("litserve", "LitServe's", 1.0),
        ):
            other = point(results, server, model, 1)
            if ours and other:
                yield (
                    f"{model}, c=1: p50 <= {name}",
                    f"{ours['p50_ms']:.1f} ms vs {other['p50_ms']:.1f} ms",
                    ours["p50_ms"] <= other["p50_ms"] * slack,
                )


def render(results: dict) -> str:
    lines = [
        "## End to end",
        "",
        f"`make bench` (`scripts/bench/endtoend.py`, {results['date']}, {results['machine']}): every server one "
        f"after the other, each point {results['seconds']:g} s of closed-loop clients (asyncio, raw HTTP "
        "keep-alive, on the same cores as the server) after a short warm-up, each model in a TorchServe of its "
        "own. Photos: *small* = skimage's cat, 451x300 JPEG; *large* = its retina photo, 1411x1411 JPEG. "
        "Servers: *ours* (this repo's archives and config.properties); *built-in* (the same compiled file with "
        "TorchServe's `image_classifier` handler and TorchServe's defaults); *fastapi* "
        "(`scripts/bench/fastapi_app.py`: one eager model, PIL, one image per request); *litserve* "
        "(`scripts/bench/litserve_app.py`: the same compiled file, LitServe's batching tuned below, as many "
        "workers and threads as ours); *the model alone* (`scripts/bench/alone.py`: the compiled file on "
        "ready-made tensors, at the served batch, threads and processes).",
        "",
        "![throughput and p99 latency against concurrency](benchmarks.png)",
        "",
        *markdown_table(
            ["target", "measured", "met"], [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(results)]
        ),
    ]
    return "\n".join(lines + point_lines(results) + litserve_lines(results) + breakdown_lines(results))


def point_lines(results: dict) -> list[str]:
    """Every point, and the model alone."""
    order = sorted(results["points"], key=lambda p: (p["model"], p["image"] != "small", p["server"], p["concurrency"]))
    points = [[p["model"], p["server"], p["image"], p["concurrency"], f"{p['req_per_s']:.1f}", f"{p['p50_ms']:.0f}",
               f"{p['p99_ms']:.0f}", f"{p['frontend_cpu_ms'] + p['worker_cpu_ms']:.1f}", p["errors"]]
              for p in order]  # fmt: skip
    alone = [[model, c["compiler"], c["workers"], c["threads"], c["batch"], f"{c['b1']:.1f}", f"{c['served']:.1f}",
              f"{c['cpu_ms_per_image']:.1f}"] for model, c in results["ceilings"].items()]  # fmt: skip
    return [
        "", "Throughput, latency and CPU per request (the server's processes: TorchServe's frontend + workers):", "",
        *markdown_table(["model", "server", "photo", "clients", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors"],
                        points),
        "", "The model alone:", "",
        *markdown_table(["model", "compiler", "processes", "threads each", "served batch", "img/s at batch 1",
                         "img/s at served batch", "CPU ms/image"], alone),
    ]  # fmt: skip


def litserve_lines(results: dict) -> list[str]:
    """LitServe's batching settings tried at 8 clients; the best (bold) is the one measured."""
    rows = [
        [
            model,
            t["max_batch_size"],
            f"{t['batch_timeout'] * 1000:g}",
            f"**{t['req_per_s']:.1f}**"
            if [t["max_batch_size"], t["batch_timeout"]] == tuning["best"]
            else f"{t['req_per_s']:.1f}",
            f"{t['p50_ms']:.0f}",
        ]
        for model, tuning in results["litserve"].items()
        for t in tuning["tried"]
    ]
    header = ["model", "max_batch_size", "batch_timeout ms", "req/s (8 clients)", "p50 ms"]
    return ["", "LitServe's batching, tried at 8 clients (batch 1: no batching):", "", *markdown_table(header, rows)]


def breakdown_lines(results: dict) -> list[str]:
    """Where a request's time goes: our handler's stages in-process (ms per image at the served
    batch), and TorchServe's own counters per request at 8 clients."""
    stages = STAGES
    rows = []
    for model, split in results["breakdown"].items():
        ours = point(results, "ours", model, 8) or {}
        counted = ours.get("queue_ms") is not None
        rows.append(
            [
                model,
                split["batch"],
                *(f"{split.get(stage, 0.0):.2f}" for stage in stages),
                f"{ours['queue_ms']:.1f}" if counted else "-",
                f"{ours['inference_ms']:.1f}" if counted else "-",
                f"{1000 / ours['req_per_s']:.1f}" if ours else "-",
            ]
        )
    header = ["model", "batch", *stages, "queue (c=8)", "in TorchServe (c=8)", "ms per request (c=8)"]
    return [
        "",
        "Where the time goes: our handler's stages, driven in-process at the served batch size (ms per image; "
        "*forward* includes stacking the batch), and TorchServe's counters per request at 8 clients (*queue*: "
        "the wait for a free worker; *in TorchServe*: from the frontend receiving the request to its answer, "
        "the queue included); *ms per request* is 1000 / req/s, the whole machine's time per request.",
        "",
        *markdown_table(header, rows),
    ]


def summary_lines(results: dict) -> list[str]:
    """The quick run's report, for a terminal."""
    lines = [
        f"{p['server']:8} {p['model']:15} {p['image']:5} c={p['concurrency']:<3} {p['req_per_s']:7.1f} req/s  "
        f"p50 {p['p50_ms']:7.1f}  p99 {p['p99_ms']:7.1f} ms  errors {p['errors']}"
        for p in results["points"]
    ]
    lines += [
        f"ceiling {model}: {c['served']:.1f} img/s at batch {c['batch']}" for model, c in results["ceilings"].items()
    ]
    return lines + [f"{'MET ' if met else 'MISS'} {target}: {measured}" for target, measured, met in targets(results)]


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["ceilings"])
    figure, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 7), squeeze=False)
    for column, model in enumerate(models):
        for server, style in SERVERS.items():
            series = sorted(
                (p for p in results["points"] if (p["server"], p["model"], p["image"]) == (server, model, "small")),
                key=lambda p: p["concurrency"],
            )
            if series:
                clients = [p["concurrency"] for p in series]
                axes[0][column].plot(clients, [p["req_per_s"] for p in series], style, label=server)
                axes[1][column].plot(clients, [p["p99_ms"] for p in series], style, label=server)
        axes[0][column].axhline(results["ceilings"][model]["served"], color="grey", lw=0.8, label="model alone")
        axes[0][column].set(title=model, ylabel="req/s")
        axes[1][column].set(ylabel="p99 latency (ms)", yscale="log")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xticks([1, 8, 32], ["1", "8", "32"])
            axes[row][column].set_xlabel("concurrent clients")
        axes[0][column].legend(fontsize=8)
    figure.suptitle(f"451x300 JPEG, {results['machine']}, {results['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
