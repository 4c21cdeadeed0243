"""The naive baseline: a minimal single-process FastAPI app serving one eager
torchvision classifier, one image per request, with the classic per-image PIL
pipeline -- what many tutorials deploy.

    python -m scripts.bench.fastapi_app --model mobilenet_v2 --port 8090
"""

import argparse
import io

import torch
import torchvision
import torchvision.transforms as T
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

PREPROCESS = T.Compose(
    [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
)


def create_app(architecture: str) -> FastAPI:
    model = torchvision.models.get_model(architecture).eval()  # weights do not change its speed
    app = FastAPI()

    @app.put("/predictions/{name}")
    async def predict(name: str, request: Request) -> dict:
        body = await request.body()
        inputs = PREPROCESS(Image.open(io.BytesIO(body)).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(inputs)[0], dim=0)
        scores, indices = probabilities.topk(5)
        return {
            "predictions": [{"index": i, "score": s} for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]
        }

    return app


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a torchvision classifier")
    parser.add_argument("--port", type=int, default=8090)
    return parser


def main(args: argparse.Namespace) -> None:
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
