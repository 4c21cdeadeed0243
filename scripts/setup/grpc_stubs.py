"""Generate TorchServe's gRPC client stubs at set-up, from the .proto files its frontend
jar ships (ts/frontend/model-server.jar): nothing is copied into the repo, and the stubs
always match the installed TorchServe.

    python -m scripts.setup.grpc_stubs        # run by `make setup`: writes the ts_grpc package

The protos are compiled as ts_grpc/<name>.proto, so the generated modules import each
other as `ts_grpc.<name>_pb2` and land as one package in the virtualenv's site-packages.
"""

import argparse
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "ts_grpc"
PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")
# What they import beyond google/protobuf (which grpcio-tools ships): from the same jar.
IMPORTED = ("google/rpc/status.proto",)


def frontend_jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"{jar} is missing: is torchserve installed?")
    return jar


def extract_protos(jar: Path, include: Path) -> list[Path]:
    """The service protos under include/ts_grpc/, their imports under include/ -> the service protos."""
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
        for name in IMPORTED:
            (include / name).parent.mkdir(parents=True, exist_ok=True)
            (include / name).write_bytes(archive.read(name))
        protos = []
        for name in PROTOS:
            source = f"proto/{name}" if f"proto/{name}" in names else name
            target = include / PACKAGE / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(source))
            protos.append(target)
    return protos


def generate(output: Path) -> list[Path]:
    """Compile the stubs into output/ts_grpc/ -> the modules written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="protos-") as tmp:
        include = Path(tmp)
        protos = extract_protos(frontend_jar(), include)
        arguments = [
            "protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={output}",
            f"--grpc_python_out={output}",
        ]
        if protoc.main([*arguments, *map(str, protos)]) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTOS)}")
    (output / PACKAGE / "__init__.py").touch()
    return sorted((output / PACKAGE).glob("*_pb2*.py"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="where the ts_grpc package goes (default: this Python's site-packages)")  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        modules = generate(args.output)
    except (OSError, RuntimeError, ImportError) as err:
        sys.exit(f"error: cannot generate TorchServe's gRPC stubs: {err}")
    print(f"{args.output / PACKAGE}: {', '.join(module.name for module in modules)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
