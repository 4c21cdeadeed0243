"""The zoo's models over TorchServe's gRPC inference API (127.0.0.1:7070 by default),
with the stubs `make setup` generates from the .proto files of the installed TorchServe
(scripts/setup/grpc_stubs.py). Same answers as the REST client (scripts/client/rest.py).

TorchServe 0.12 answers a gRPC Predictions call with the handler's body and no status:
a request the handler refused (HTTP 4xx on REST) comes back as a *successful* call whose
body is the error JSON. This client turns it back into what it is -- a failed answer
with the status the handler put in that JSON -- and `predict_or_raise` into a failed
call (grpc.RpcError-like GrpcAnswerError) for code that wants an exception.
"""

import json

import grpc

from scripts.client.auth import AuthError, Tokens
from scripts.client.rest import DIED, UNAVAILABLE, Answer, ConnectionFailed, wait_before_retry
from scripts.ts_api import WORKER_DIED, key_refused_grpc, read_properties

JPEG_MAGIC = b"\xff\xd8\xff"


def retry_reason_grpc(code: str, details: str) -> str | None:
    """The REST client's retry_reason for a failed gRPC call: the frontend's "Worker died."
    (INTERNAL, its message then the exception's name on the next line) or its UNAVAILABLE
    (no worker yet, a full queue). A handler's own error carries the handler's JSON body."""
    first_line = details.split("\n", 1)[0]
    if code == "INTERNAL" and first_line == WORKER_DIED:
        return DIED
    if code == "UNAVAILABLE" and not first_line.startswith("{") and "connect" not in first_line.lower():
        return UNAVAILABLE
    return None


class GrpcAnswerError(Exception):
    """A per-request error of the handler, as a failed call: the error JSON is the message."""

    def __init__(self, answer: Answer):
        super().__init__(answer.body.decode("utf-8", "replace").strip())
        self.answer = answer


def as_answer(prediction: bytes, attempts: int) -> Answer:
    """A Predictions call's body -> the Answer REST would have given (status from the error JSON)."""
    if prediction.startswith(JPEG_MAGIC):
        return Answer(200, prediction, "image/jpeg", attempts=attempts)
    try:
        document = json.loads(prediction)
    except ValueError:
        return Answer(200, prediction, "application/octet-stream", attempts=attempts)
    status = document.get("status", 500) if isinstance(document, dict) and "error" in document else 200
    return Answer(int(status), prediction, "application/json", attempts=attempts)


class GrpcClient:
    def __init__(self, target: str, management_url: str, tokens: Tokens, retries: int = 5, backoff: float = 0.5,
                 timeout: float = 120):  # fmt: skip
        from ts_grpc import inference_pb2, inference_pb2_grpc

        self.target, self.management_url, self.tokens = target, management_url, tokens
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self._messages = inference_pb2
        self._channel = grpc.insecure_channel(target)
        self._stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)

    @classmethod
    def from_config(cls, config, key_file=None, token=None, **options) -> "GrpcClient":
        properties = read_properties(config)
        host = properties.get("grpc_inference_address", "127.0.0.1")
        target = f"{host}:{properties.get('grpc_inference_port', '7070')}"
        return cls(target, properties["management_address"], Tokens(key_file, token), **options)

    def _call(self, model: str, data: bytes, params: dict[str, str]) -> bytes:
        request = self._messages.PredictionsRequest(
            model_name=model, input={"data": data, **{name: str(value).encode() for name, value in params.items()}}
        )
        metadata = (("authorization", f"Bearer {self.tokens.inference()}"),)
        return self._stub.Predictions(request, metadata=metadata, timeout=self.timeout).prediction

    def predict(self, model: str, data: bytes, params: dict[str, str] | None = None, filename: str = "image") -> Answer:
        """One image -> its answer; as the REST client: retries, at most one after "Worker
        died.", an expired key refreshed once."""
        refreshed, attempt, died = False, 0, 0
        while True:
            key = self.tokens.inference()
            try:
                return as_answer(self._call(model, data, params or {}), attempt + 1)
            except grpc.RpcError as err:
                details = err.details() or ""
                if key_refused_grpc(err.code().name, details):
                    if refreshed:
                        raise AuthError(f"TorchServe refused the inference key: {details}") from err
                    self.tokens.refresh(self.management_url, key)
                    refreshed = True
                    continue
                if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                    raise ConnectionFailed(f"cannot reach TorchServe's gRPC API at {self.target}: {details}") from err
                attempt += 1
                reason = retry_reason_grpc(err.code().name, details)
                died += reason == DIED
                if reason is not None and attempt <= self.retries and died <= 1:
                    wait_before_retry(attempt, self.backoff)
                    continue
                body = json.dumps({"error": err.code().name.lower(), "detail": details, "status": 500}).encode()
                return Answer(500, body, "application/json", attempts=attempt)

    def predict_or_raise(self, model: str, data: bytes, params: dict[str, str] | None = None) -> Answer:
        """predict, with a refused request as an exception (GrpcAnswerError) rather than an answer."""
        answer = self.predict(model, data, params)
        if not answer.ok:
            raise GrpcAnswerError(answer)
        return answer
