#!/usr/bin/env python3
"""Drain figure for claims, comparing `spool` binaries in one sitting.

For each binary, alternating, each round: start it on a fresh SQLite file,
admit N noop jobs into a paused queue (batches of 1 000), open the queue and
time until it is empty. `--tenants 2` splits the jobs between two tenants
(round-robin claims); `--tenants 1` is the single-tenant case. Prints each
round and the median per binary and tenant count.

    python3 scripts/bench-claims.py --jobs 50000 --rounds 5 \
        old=/path/to/old/spool new=target/release/spool
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

KEYS = {
    "ops": "ops-admin-key-for-the-claims-bench",
    "t1": "t1-write-key-for-the-claims-bench",
    "t2": "t2-write-key-for-the-claims-bench",
}


def call(base, method, path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drain(binary, jobs, tenants, concurrency):
    with tempfile.TemporaryDirectory() as dir:
        port = free_port()
        env = dict(os.environ)
        env.update(
            SPOOL_BIND=f"127.0.0.1:{port}",
            SPOOL_DATABASE_URL=f"sqlite://{dir}/claims.db",
            SPOOL_API_KEYS=",".join(
                [f"ops:admin:{KEYS['ops']}", f"t1:write:{KEYS['t1']}", f"t2:write:{KEYS['t2']}"]
            ),
            RUST_LOG="warn",
        )
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(base + "/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            queue = {"concurrency": concurrency, "capacity": 10_000_000, "paused": True}
            call(base, "PUT", "/v1/queues/drain", KEYS["ops"], queue)
            job = {"kind": "noop", "queue": "drain"}
            for n in range(jobs // 1000):
                tenant = f"t{1 + n % tenants}"
                call(base, "POST", "/v1/batches", KEYS[tenant], {"jobs": [job] * 1000})
            started = time.monotonic()
            call(base, "PUT", "/v1/queues/drain", KEYS["ops"], dict(queue, paused=False))
            while True:
                counts = call(base, "GET", "/v1/queues/drain", KEYS["ops"])["counts"]
                if counts["queued"] == 0 and counts["running"] == 0:
                    return jobs / (time.monotonic() - started)
                time.sleep(0.005)
        finally:
            process.terminate()
            process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 2])
    parser.add_argument("binaries", nargs="+", help="NAME=PATH")
    args = parser.parse_args()
    binaries = [entry.split("=", 1) for entry in args.binaries]
    figures = {}
    for round in range(args.rounds):
        for tenants in args.tenants:
            for name, path in binaries:
                rate = drain(path, args.jobs, tenants, args.concurrency)
                figures.setdefault((name, tenants), []).append(rate)
                print(f"round {round + 1}: {name}, {tenants} tenant(s): {rate:,.0f} jobs/s", flush=True)
    print()
    for (name, tenants), rates in figures.items():
        print(f"{name}, {tenants} tenant(s): median {statistics.median(rates):,.0f} jobs/s drained")
    for tenants in args.tenants:
        base = statistics.median(figures[(binaries[0][0], tenants)])
        for name, _ in binaries[1:]:
            ratio = statistics.median(figures[(name, tenants)]) / base
            print(f"{tenants} tenant(s): {name} / {binaries[0][0]} = {ratio:.2f}")


if __name__ == "__main__":
    main()
