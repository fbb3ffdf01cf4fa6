"""onnxruntime side of edgedx-bench: a long-lived helper that the harness drives over
stdin/stdout, one JSON object per line, so that onnxruntime iterations can be interleaved
with edgedx iterations in the same run.

Requests (the harness sends them; every reply has "ok"):
  {"cmd": "hello"}                                         -> versions, providers, cpu count
  {"cmd": "load", "key": K, "path": P, "output": O, "threads": T} -> load_ms
  {"cmd": "input", "key": K, "path": P, "shape": [..]}    -> raw little-endian float32 file
  {"cmd": "run", "model": K, "input": K}                  -> ms, output (flat list)
  {"cmd": "quit"}

Sessions are configured for a fair single-request latency comparison: CPU execution
provider, sequential execution, inter-op 1 thread, intra-op T threads, default graph
optimisations (what onnxruntime users get). Spinning is off: with spinning on, idle
onnxruntime worker threads keep a core busy after `run` returns and would slow the edgedx
iteration that follows. The time is taken around `session.run` only.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    sessions: dict[str, tuple[ort.InferenceSession, str, str]] = {}
    inputs: dict[str, np.ndarray] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req["cmd"]
            if cmd == "hello":
                reply({"ok": True, "onnxruntime": ort.__version__, "numpy": np.__version__,
                       "providers": ort.get_available_providers(), "cpus": os.cpu_count()})
            elif cmd == "load":
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = int(req["threads"])
                opts.inter_op_num_threads = 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                t = time.perf_counter_ns()
                session = ort.InferenceSession(req["path"], opts, providers=["CPUExecutionProvider"])
                load_ms = (time.perf_counter_ns() - t) / 1e6
                sessions[req["key"]] = (session, session.get_inputs()[0].name, req["output"])
                reply({"ok": True, "load_ms": load_ms})
            elif cmd == "input":
                data = np.fromfile(req["path"], dtype="<f4")
                inputs[req["key"]] = np.ascontiguousarray(data.reshape(req["shape"]))
                reply({"ok": True})
            elif cmd == "run":
                session, name, output = sessions[req["model"]]
                x = inputs[req["input"]]
                t = time.perf_counter_ns()
                out = session.run([output], {name: x})[0]
                ms = (time.perf_counter_ns() - t) / 1e6
                reply({"ok": True, "ms": ms, "output": out.astype(np.float64).ravel().tolist()})
            elif cmd == "quit":
                reply({"ok": True})
                return
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:  # report to the harness instead of dying mid-run
            reply({"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
