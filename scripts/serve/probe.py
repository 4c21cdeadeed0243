"""Health probes of a TorchServe on this host, for a container (Docker's HEALTHCHECK,
Kubernetes' exec probes): exit 0 when it passes, 1 when not. Standard library only.

    python -m scripts.serve.probe            # ready: /ping answers 200 (every model has its workers)
    python -m scripts.serve.probe --alive    # alive: the frontend answers /ping at all
"""

import argparse
import sys
import urllib.error
import urllib.request


def probe(url: str, alive_only: bool, timeout: float) -> tuple[bool, str]:
    """(passed, what was seen) for TorchServe's /ping at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout) as answer:
            return True, f"{answer.status}"
    except urllib.error.HTTPError as err:  # it answered: alive, not ready (a model lacks workers)
        return alive_only, f"{err.code}"
    except (urllib.error.URLError, OSError) as err:
        return False, f"no answer: {err}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="TorchServe's inference address")
    parser.add_argument("--alive", action="store_true", help="pass on any answer, not only on 200")
    parser.add_argument("--timeout", type=float, default=4)
    return parser


def main(args: argparse.Namespace) -> int:
    passed, seen = probe(args.url, args.alive, args.timeout)
    if not passed:
        print(f"{'alive' if args.alive else 'ready'} probe failed: /ping {seen}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
