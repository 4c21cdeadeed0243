"""What every caller of a TorchServe shares -- the client, the servers' launcher and
harness, the benchmarks: reading its config.properties, and telling its refusal of an
access key. Standard library only: the runtime image's launcher imports it."""

from pathlib import Path

# What TorchServe says, over REST (400 or 401, by version) and gRPC, to a missing, wrong or expired key.
KEY_REFUSED = "Token Authorization failed"


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file's key=value lines (comments skipped): how everything here
    reads config.properties."""
    pairs = (line.split("=", 1) for line in Path(path).read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


def key_refused(status: int, body: str) -> bool:
    """Whether an HTTP answer is TorchServe refusing the key it was sent."""
    return status in (400, 401) and KEY_REFUSED in body
