"""Compile one model of the zoo to TorchScript, prove it matches the eager model on
real photos, and embed its metadata (task, input contract, weights provenance).

    python -m scripts.building.compile mobilenet_v2 --output build/mobilenet_v2.pt
"""

import argparse
import contextlib
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch.export import Dim

from handlers.engine import INPUT_FORMAT, OUTPUT_FORMAT, split_features
from handlers.service import METADATA_FILE
from scripts.building.profiles import model_config
from scripts.families import family
from scripts.families.weights import Weights, WeightsError
from scripts.nets.inputs import WithInput
from scripts.zoo import ModelSpec, get_model, served_by

METADATA_FORMAT = 1


class ParityError(Exception):
    """The compiled model does not reproduce the eager one."""


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ReducedPrecision(torch.nn.Module):
    """Runs the model in bf16/fp16 behind an fp32 interface: the handlers stay the same."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [output.float() for output in self.model(x.to(self.dtype))]


def script_and_freeze(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """TorchScript with parameters folded in as constants (conv+BN fused by freeze)."""
    return torch.jit.freeze(torch.jit.script(model.eval()))


def save_compiled(module: torch.jit.ScriptModule, metadata: dict, path: Path) -> None:
    """Write atomically: an interrupted build never leaves a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    extra = {METADATA_FILE: json.dumps(metadata, indent=1)}
    torch.jit.save(module, str(partial), _extra_files=extra)
    os.replace(partial, path)


def export_and_package(model: torch.nn.Module, example: torch.Tensor, spatial_dynamic: bool, path: Path) -> Path:
    """torch.export with a dynamic batch (and height/width in multiples of 32 for the
    letterboxing families), compiled ahead of time by AOTInductor with its weights
    frozen in, into a .pt2 package -- written next to `path`, not over it."""
    dims = {0: Dim("batch", min=1, max=64)}
    if spatial_dynamic:
        dims.update({2: 32 * Dim("rows", min=1, max=128), 3: 32 * Dim("cols", min=1, max=128)})
    with torch.inference_mode():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes={"x": dims})
    partial = path.with_name(path.stem + ".partial.pt2")  # the packager insists on the suffix
    partial.parent.mkdir(parents=True, exist_ok=True)
    configs = {"freezing": True}
    if example.device.type == "cuda":
        # GPU kernels inside the package's library, not in files beside it that the model
        # reads when it first runs: a worker deletes the unpacked package once it is loaded
        # (handlers/service.py::load_aoti_package).
        configs["aot_inductor.embed_kernel_binary"] = True
    torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=configs)
    return partial


@contextlib.contextmanager
def exact_fp32():
    """float32 computed as float32 on a GPU while a build is made and checked: PyTorch lets
    cuDNN round convolutions to TF32 by default (10-bit mantissa), which moves resnet50's
    logits by ~1e-2 -- past the fp32 tolerance, which checks the compilation, not the GPU's
    rounding mode. Serving keeps PyTorch's default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def add_metadata(package: Path, metadata: dict) -> None:
    """Embed metadata.json in an AOTInductor package, beside the files its loader reads."""
    with zipfile.ZipFile(package, "a") as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{top}/extra/{METADATA_FILE}", json.dumps(metadata, indent=1))


def compile_model(
    spec: ModelSpec, weights: Weights, output: Path, precision: str = "fp32", device: str = "cpu"
) -> dict:
    """Compile to TorchScript (`output` ending in .pt) or an AOTInductor package (.pt2),
    in fp32 or reduced precision, check it against the fp32 eager model on real photos
    (within the family's documented tolerance for bf16/fp16), embed the metadata.
    AOTInductor packages run on the device they were compiled on (`device`); TorchScript
    files load on any device. The compiled model answers the task's outputs and then
    the pooled features the handlers' drift test reads (scripts/nets/features.py)."""
    with exact_fp32():
        return compile_checked(spec, weights, output, precision, device)


def compile_checked(spec: ModelSpec, weights: Weights, output: Path, precision: str, device: str) -> dict:
    """compile_model's work, with float32 exact on a GPU."""
    recipe = family(spec.family).recipe
    device = torch.device(device)
    try:
        input_parity = recipe.check_input(weights) if recipe.check_input else None
    except ValueError as err:
        raise ParityError(f"{spec.name}: the handler would not serve it the input its weights expect: {err}") from err
    network = recipe.build(spec, weights)
    eager = WithInput(recipe.input_adapter(weights), recipe.with_features(network)).eval().to(device)
    example = recipe.example(weights).to(device)  # uint8 RGB, as the handlers send it
    with torch.inference_mode():
        reference = eager(example)
    if precision != "fp32":
        reduced = ReducedPrecision(recipe.with_features(network), PRECISIONS[precision])
        eager = WithInput(recipe.input_adapter(weights), reduced).eval().to(device)
    weights_format = "contiguous"
    if output.suffix == ".pt" and served_channels_last(spec, device):
        # Its batches come channels-last: frozen weights stored so too are what the NHWC
        # convolutions read; NCHW ones cuDNN would convert at every call. (AOTInductor lays
        # out its own weights.)
        eager = eager.to(memory_format=torch.channels_last)
        example, weights_format = example.contiguous(memory_format=torch.channels_last), "channels_last"
    if output.suffix == ".pt2":
        partial = export_and_package(eager, example, recipe.spatial_dynamic, output)
        compiled, compiler = torch._inductor.aoti_load_package(str(partial)), "torch.export + AOTInductor (freezing)"
    else:
        partial, compiled, compiler = None, script_and_freeze(eager), "torch.jit.script + torch.jit.freeze"
    with torch.inference_mode():
        result = compiled(example)
    (reference_outputs, reference_features), (outputs, features) = split_features(reference), split_features(result)
    try:
        parity = recipe.check(reference_outputs, outputs, precision)
        check_feature_parity(reference_features, features, precision)
    except ValueError as err:
        raise ParityError(f"{spec.name}: the compiled model does not match the eager one: {err}") from err
    metadata = {
        "format": METADATA_FORMAT,
        "model": spec.name,
        **recipe.metadata(spec, weights),
        "weights": weights.describe(),
        "torch_version": torch.__version__,
        "compiler": compiler,
        "precision": precision,
        "input_format": INPUT_FORMAT,  # what the handlers feed
        "output_format": OUTPUT_FORMAT,  # what they read back
        "feature_size": features.shape[1],
        "features": recipe.features,
        "device": str(device),  # AOTInductor packages run on the device they were compiled for
        "weights_memory_format": weights_format,
        "parity_max_abs_diff": parity,
        **({"input_parity_mean_abs_diff": input_parity} if input_parity is not None else {}),
        # The other networks its archive carries and its task may run, by name: their files.
        **({"companions": {n: f.name for n, f in spec.companion_files(output).items()}} if spec.companions else {}),
    }
    if partial is None:
        save_compiled(compiled, metadata, output)
    else:
        add_metadata(partial, metadata)
        os.replace(partial, output)
    # Check the file as it will be served, not only the in-memory module.
    with torch.inference_mode():
        reloaded = load_artifact(output, device)(example)
    if not all(torch.equal(a, b) for a, b in zip(result, reloaded, strict=True)):
        output.unlink()
        raise ParityError(f"{spec.name}: the saved file {output} does not reproduce the compiled module")
    return metadata


def served_channels_last(spec: ModelSpec, device: torch.device) -> bool:
    """Whether the handler feeds this model channels-last batches on `device`: the
    `channels_last` setting of the profile (the GPU's on CUDA) of the model that serves it
    (a companion's is its model's); a model without settings of its own is fed the default."""
    owner = served_by(spec)
    if not owner.config_file.is_file():
        return False
    profile = "gpu" if device.type == "cuda" else "cpu"
    return bool(model_config(owner, profile).get("handler", {}).get("channels_last", False))


def check_feature_parity(eager: torch.Tensor, compiled: torch.Tensor, precision: str = "fp32") -> None:
    """The drift features: fp32 within 1e-4 of their largest magnitude (at least 1e-4
    absolute); bf16/fp16 within 10 % of it. They feed a statistical test, not an answer."""
    if eager.shape != compiled.shape:
        raise ValueError(f"features of shape {tuple(compiled.shape)}, expected {tuple(eager.shape)}")
    scale, difference = max(1.0, eager.abs().max().item()), (eager - compiled).abs().max().item()
    tolerance = (1e-4 if precision == "fp32" else 0.1) * scale
    if difference > tolerance:
        raise ValueError(f"features differ by up to {difference:.3g} (tolerance {tolerance:.3g})")


def load_artifact(path: Path, device: torch.device):
    if path.suffix == ".pt2":
        return torch._inductor.aoti_load_package(str(path))
    return torch.jit.load(str(path), map_location=device)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compile one zoo model to TorchScript.")
    parser.add_argument("model", help="a model name from scripts/zoo.py")
    parser.add_argument("--output", type=Path, required=True, help="the TorchScript file to write")
    parser.add_argument("--weights", type=Path, help="a state-dict file to use (highest priority)")
    parser.add_argument("--weights-dir", type=Path, help="a directory holding <model>.pth or <model>.pt")
    parser.add_argument("--no-download", action="store_true", help="never try to download weights")
    parser.add_argument("--strict", action="store_true", help="fail instead of using random weights")
    parser.add_argument(
        "--precision", choices=sorted(PRECISIONS), default="fp32", help="bf16/fp16: reduced-precision variant"
    )
    parser.add_argument("--device", default="cpu", help="where to check (and, for .pt2, compile for): cpu, cuda")
    return parser


def main(args: argparse.Namespace) -> None:
    # torch 2.14 marks every torch.jit entry point deprecated; TorchScript is still
    # the format TorchServe loads here, so the warnings would only bury the output.
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please (switch to|use)", category=FutureWarning)
    try:
        spec = get_model(args.model)
        weights = family(spec.family).recipe.resolve_weights(
            spec, args.weights, args.weights_dir, download=not args.no_download, strict=args.strict
        )
        metadata = compile_model(spec, weights, args.output, args.precision, args.device)
    except (KeyError, WeightsError, ParityError) as err:
        sys.exit(f"error: {err.args[0] if isinstance(err, KeyError) else err}")
    print(
        f"{args.output}: {spec.name}, weights {metadata['weights']['name']}, "
        f"parity max |diff| {metadata['parity_max_abs_diff']:.2e}"
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
