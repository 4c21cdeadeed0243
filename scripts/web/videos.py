"""The page's video jobs, bounded by construction: at most MAX_VIDEOS_AT_ONCE clips
uploading or being anonymised, counted under one lock before an upload is read; each clip
anonymised by a child process (this module run as a program), so that FFmpeg meeting a
hostile file can crash or exhaust only that process, within an address space of
WORKER_MEMORY_BYTES, and a job can be cancelled by ending it. The child refuses frames
over the model's pixel limit from the container's stream header before decoding any
(scripts/client/video.py), and reports its progress as JSON lines on its stdout.

    python -m scripts.web.videos SOURCE TARGET --config C --key-file K --params '{"mode": "blur"}'
"""

import argparse
import json
import logging
import resource
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from scripts.client.auth import AuthError
from scripts.client.rest import ConnectionFailed, ZooClient
from scripts.client.video import FRAME_MEMORY, TRACK_FRAMES, FrameRefused, anonymise_video
from scripts.zoo import REPO

logger = logging.getLogger(__name__)
MAX_VIDEO_BYTES = 100_000_000  # a short clip
MAX_VIDEOS_AT_ONCE = 2  # clips being uploaded or anonymised
KEPT_VIDEOS = 8  # finished clips kept to download, the oldest forgotten first
WORKER_MEMORY_BYTES = 4 << 30  # a child's address space: a frame of the largest size the model takes, in flight
ACTIVE = ("uploading", "running")


@dataclass
class VideoJob:
    """A clip: its upload, then the child anonymising it; how far it is, and its result."""

    directory: Path
    suffix: str
    state: str = "uploading"  # uploading, running, done, failed, cancelled
    done: int = 0
    total: int = 0
    error: str = ""
    process: subprocess.Popen | None = None

    @property
    def source(self) -> Path:
        return self.directory / f"clip{self.suffix}"

    @property
    def target(self) -> Path:
        return self.directory / f"anonymised{self.suffix}"

    def status(self) -> dict:
        return {"state": self.state, "done": self.done, "total": self.total, "error": self.error}


class VideoJobs:
    """The jobs table; every read and change of it under one lock."""

    def __init__(self, root: Path, config: Path, key_file: Path):
        self.root, self.config, self.key_file = root, config, key_file
        self.lock = threading.Lock()
        self.jobs: dict[str, VideoJob] = {}  # oldest first

    def reserve(self, suffix: str) -> tuple[str, VideoJob] | None:
        """A new job, counted from now (before its upload is read); None when
        MAX_VIDEOS_AT_ONCE are uploading or running."""
        with self.lock:
            if sum(job.state in ACTIVE for job in self.jobs.values()) >= MAX_VIDEOS_AT_ONCE:
                return None
            finished = [key for key, job in self.jobs.items() if job.state not in ACTIVE]
            for key in finished[: max(0, len(self.jobs) + 1 - KEPT_VIDEOS)]:
                shutil.rmtree(self.jobs.pop(key).directory, ignore_errors=True)
            key = secrets.token_hex(16)
            job = self.jobs[key] = VideoJob(self.root / key, suffix)
            job.directory.mkdir()
            return key, job

    def discard(self, key: str) -> None:
        """Forget a job whose upload was refused or broke off."""
        with self.lock:
            job = self.jobs.pop(key, None)
        if job is not None:
            shutil.rmtree(job.directory, ignore_errors=True)

    def start(self, key: str, params: dict[str, str], frames: dict[str, int], max_pixels: int) -> None:
        """The uploaded clip handed to a child process, followed by a thread. `frames`:
        frame_memory and track_frames (the page's server checked them)."""
        with self.lock:
            job = self.jobs.get(key)
            if job is None or job.state != "uploading":
                return
            command = [sys.executable, "-m", "scripts.web.videos", str(job.source), str(job.target),
                       "--config", str(self.config), "--key-file", str(self.key_file), "--params", json.dumps(params),
                       *(f"--{name.replace('_', '-')}={count}" for name, count in frames.items()),
                       "--max-pixels", str(max_pixels)]  # fmt: skip
            job.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
            job.state = "running"
        threading.Thread(target=self._follow, args=(job,), daemon=True).start()

    def _follow(self, job: VideoJob) -> None:
        """The child's progress lines into the job, until it ends."""
        for line in job.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if job.state == "running":
                    job.done, job.total = int(report.get("done", job.done)), int(report.get("total", job.total))
                    job.state, job.error = report.get("state", job.state), str(report.get("error", ""))[:600]
        code = job.process.wait()
        with self.lock:
            if job.state == "running":  # ended without a word: killed, out of memory, crashed
                logger.warning("the video job in %s ended with status %s", job.directory.name, code)
                job.state, job.error = "failed", "the clip cannot be read or written as a video (its decoder stopped)"
        job.source.unlink(missing_ok=True)

    def cancel(self, key: str) -> bool:
        """Stop a job (its child ended) and forget it with its files; False if there is none."""
        with self.lock:
            job = self.jobs.pop(key, None)
            if job is None:
                return False
            job.state = "cancelled"
        if job.process is not None and job.process.poll() is None:
            job.process.kill()
            job.process.wait()
        shutil.rmtree(job.directory, ignore_errors=True)
        return True

    def status(self, key: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(key)
            return job.status() if job is not None else None

    def result(self, key: str) -> Path | None:
        with self.lock:
            job = self.jobs.get(key)
            return job.target if job is not None and job.state == "done" else None

    def close(self) -> None:
        """Every child ended (the page's server stops)."""
        for key in list(self.jobs):
            self.cancel(key)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Anonymise one clip for the page (its child process)")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="TorchServe's config.properties")
    parser.add_argument("--key-file", type=Path, required=True, help="TorchServe's key_file.json")
    parser.add_argument("--params", type=json.loads, default={}, help="the pixelizer's parameters (JSON)")
    parser.add_argument("--frame-memory", type=int, default=FRAME_MEMORY)
    parser.add_argument("--track-frames", type=int, default=TRACK_FRAMES)
    parser.add_argument("--max-pixels", type=int, default=None, help="the model's pixel limit per frame")
    return parser


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main(args: argparse.Namespace) -> int:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    try:
        client = ZooClient.from_config(args.config, args.key_file, retries=2)
        anonymise_video(client, args.source, args.target, {**args.params, "format": "image"},
                        progress=lambda done, total: report(done=done, total=total), frame_memory=args.frame_memory,
                        track_frames=args.track_frames, max_pixels=args.max_pixels)  # fmt: skip
    except FrameRefused as err:
        report(state="failed", error=str(err))
    except (ConnectionFailed, AuthError) as err:
        report(state="failed", error=f"TorchServe does not answer: {type(err).__name__}")
    except Exception as err:  # PyAV on a file that is not a video it can read, a frame over the memory limit
        logging.exception("anonymising the clip failed")
        report(state="failed", error=f"the clip cannot be read or written as a video ({type(err).__name__})")
    else:
        report(state="done")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
