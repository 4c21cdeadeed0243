"""A lent GPU machine as the tests simulate it on the CPU (../shared/gpu/README.md): its own
Python with nothing beside it, no package index and no way out; optionally its site
without nvidia-ml-py and with an AOTInductor loader that kills the process."""

import os
import sys
from pathlib import Path

from scripts.zoo import REPO

# The machine's packages: no nvidia-ml-py, no SciPy (not carried: requirements-gpu-device.txt),
# and AOTInductor packages that kill the process that loads them (as torch 2.11's did with CUDA ones).
DEVICE_SITE = {
    "pynvml.py": "raise ModuleNotFoundError(\"No module named 'pynvml'\", name='pynvml')\n",
    "scipy.py": "raise ModuleNotFoundError(\"No module named 'scipy'\", name='scipy')\n",
    "sitecustomize.py": "import os\nimport torch._inductor\n"
                        "torch._inductor.aoti_load_package = lambda *args, **kwargs: os.abort()\n",
}  # fmt: skip


def offline(tmp_path: Path) -> dict[str, str]:
    """The device's environment: no package index, no way out, the machine's Python alone
    (a link to this interpreter's base, with nothing beside it), no PYTHONPATH."""
    bin_dir = tmp_path / "machine-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(Path(os.path.realpath(sys.executable)))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    path = [entry for entry in env["PATH"].split(os.pathsep) if not entry.startswith(str(REPO))]
    return {**env, "PATH": os.pathsep.join([str(bin_dir), *path]), "PYTHON": str(bin_dir / "python3"),
            "PIP_NO_INDEX": "1", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "no_proxy": "127.0.0.1,localhost,::1",
            "SITE": str(tmp_path / "site"), "WHEELS": str(tmp_path / "whl"), "OUT": str(tmp_path / "out")}  # fmt: skip


def with_machine_site(env: dict[str, str], folder: Path) -> dict[str, str]:
    """`env` with the machine's preinstalled packages (torch: this venv's) and DEVICE_SITE first."""
    folder.mkdir()
    for name, text in DEVICE_SITE.items():
        (folder / name).write_text(text)
    venv_site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    return {**env, "PYTHONPATH": os.pathsep.join([str(folder), str(venv_site)])}
