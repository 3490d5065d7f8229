"""Seconds from `cancel` to the server's `cancelled` reply, per pipeline stage, with the real checkpoints.

One server process rigs a clip again and again; each time, when the first progress message of the chosen
stage arrives (plus a random 0-0.5 s, to land inside the stage's work), the client sends `cancel` and times
the `cancelled` reply. Then it sends another rig at once, checks that it is accepted (not `busy`), and
cancels it too.

    python bench/bench_cancel_latency.py [--input /work/shared/realdata/khronos_fox_run.npz] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("sample", "skeleton", "skinning", "fit", "heatmap", "report")


class Server:
    def __init__(self, checkpoints: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.app.server", "--checkpoints", str(checkpoints),
                                      "--device", "cpu"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert json.loads(self.proc.stdout.readline())["type"] == "ready"

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)
        self.proc.stdout.close()


def cancel_in_stage(server: Server, source: Path, output: Path, stage: str, rng: random.Random,
                    request_id: int) -> tuple[float | None, str]:
    """Cancel a rig during ``stage``; returns (seconds from cancel to reply, the reply's code or 'result')."""
    server.send({"id": request_id, "method": "rig", "params": {"input": str(source), "output": str(output)}})
    sent_at = None
    while True:
        message = server.read()
        if message.get("type") == "progress" and message.get("stage") == stage and sent_at is None:
            time.sleep(rng.uniform(0.0, 0.5))
            server.send({"id": f"c{request_id}", "method": "cancel", "params": {"id": request_id}})
            sent_at = time.monotonic()
        elif message.get("id") == request_id and message.get("type") in ("result", "error"):
            code = message["error"]["code"] if message["type"] == "error" else "result"
            return (time.monotonic() - sent_at if sent_at is not None else None), code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=Path("/work/shared/realdata/khronos_fox_run.npz"))
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    server = Server(args.checkpoints)
    worst_busy = 0
    with tempfile.TemporaryDirectory(prefix="bench_cancel_") as tmp:
        output = Path(tmp) / "result.npz"
        request_id = 0
        for stage in args.stages:
            latencies = []
            for _ in range(args.repeats):
                request_id += 1
                seconds, code = cancel_in_stage(server, args.input, output, stage, rng, request_id)
                if code == "cancelled" and seconds is not None:
                    latencies.append(seconds)
                # at once: the next rig must be accepted (progress), not refused as busy; then cancel it too
                server.send({"id": "next", "method": "rig", "params": {"input": str(args.input), "output": str(output)}})
                while (reply := server.read()).get("id") != "next":
                    pass
                busy = reply.get("type") == "error" and reply["error"]["code"] == "busy"
                worst_busy += busy
                if not busy:
                    server.send({"id": "c-next", "method": "cancel", "params": {"id": "next"}})
                    while not ((reply := server.read()).get("id") == "next" and reply.get("type") in ("result", "error")):
                        pass
            shown = ", ".join(f"{s:.2f}" for s in latencies) or "none (the rig finished first)"
            print(f"{stage:9s} cancel -> reply seconds: {shown}" + (f"  (max {max(latencies):.2f})" if latencies else ""))
    server.close()
    print(f"'busy' replies to a rig sent right after a cancelled one: {worst_busy} of {request_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
