"""Write index_to_name.json: ImageNet-1k class index -> human-readable label.

The labels are torchvision's own (`torchvision.models._meta._IMAGENET_CATEGORIES`),
the list that every torchvision ImageNet weights enum reports in `meta["categories"]`,
so the indices agree with the classifiers we compile.
"""

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imagenet_labels() -> dict[str, str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return {str(index): label for index, label in enumerate(_IMAGENET_CATEGORIES)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "index_to_name.json")
    return parser


def main(args: argparse.Namespace) -> None:
    args.output.write_text(json.dumps(imagenet_labels(), indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
