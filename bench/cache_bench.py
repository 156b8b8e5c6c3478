#!/usr/bin/env python3
"""CPU per request of a cache hit: Portcullis's response cache against nginx's `proxy_cache`,
the same 1 KiB JSON document, the same pinning, in one run.

Usage: bench/run-cache [--duration S] [--rounds N] [--connections C]

An nginx backend (CPU 1) serves the document with `Cache-Control: max-age=3600`. Each proxy under
test (CPU 0) sits in front of it: nginx with `proxy_cache` (a keys zone, 64 MiB on disk under the
run's temporary directory, served from the page cache) and Portcullis with `cache: { ttl_s: 3600
}`; both also without a cache, for reference. wrk (CPU 1) requests the one URL, so after the
first request every request is a hit (checked: nginx's `X-Cache-Status`, Portcullis's
`Cache-Status`, and the backend's request count). CPU is user+sys of the proxy's serving process
(nginx's worker; Portcullis with one worker thread) over the run, divided by the requests
completed. Targets alternate within each round; medians are reported. Every process started is
stopped by PID.
"""
import argparse
import os
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402

PATH = pb.DOC_PATH
document = pb.json_document


def wrk(port, duration, connections):
    return pb.wrk_count(port, duration, connections)


def fetch(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=5) as r:
        status = r.headers.get("X-Cache-Status") or r.headers.get("Cache-Status") or "-"
        return status, r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    doc = document()
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            pb.serve_file(workdir, doc)
            cache_dir = os.path.join(workdir, "nginx-cache")
            os.mkdir(cache_dir)
            os.chmod(cache_dir, 0o777)
            backend, backend_port, _ = pb.start_nginx_http(
                workdir, "backend", 1,
                f"server {{ listen 127.0.0.1:PORT; root {workdir}; "
                "location / { default_type application/json; "
                'add_header Cache-Control "max-age=3600"; } }')
            procs.append(backend)
            upstream = f"upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }} "
            location = ("proxy_pass http://backend; proxy_http_version 1.1; "
                        'proxy_set_header Connection ""; ')
            targets = {}
            cached = (f"proxy_cache_path {cache_dir} levels=1:2 keys_zone=c:10m max_size=64m; "
                      + upstream + "server { listen 127.0.0.1:PORT; location / { " + location
                      + "proxy_cache c; add_header X-Cache-Status $upstream_cache_status; } }")
            p, port, worker = pb.start_nginx_http(workdir, "nginx-cache", 0, cached)
            procs.append(p)
            targets["nginx proxy_cache"] = (port, worker)
            p, port, worker = pb.start_nginx_http(workdir, "nginx-plain", 0,
                                    upstream + "server { listen 127.0.0.1:PORT; location / { "
                                    + location + "} }")
            procs.append(p)
            targets["nginx proxy"] = (port, worker)
            p, port, pid = pb.start_portcullis(
                workdir, backend_port, 0, name="portcullis-cache",
                extra=("", "    cache: { ttl_s: 3600 }\n"))
            procs.append(p)
            targets["portcullis cache"] = (port, pid)
            p, port, pid = pb.start_portcullis(workdir, backend_port, 0, name="portcullis-plain")
            procs.append(p)
            targets["portcullis proxy"] = (port, pid)

            for name, (port, _) in targets.items():
                fetch(port)
                status, body = fetch(port)
                assert body == doc, f"{name}: body differs from the document"
                if "cache" in name:
                    assert "HIT" in status or "hit" in status, f"{name}: second request not a hit: {status}"
                print(f"{name:<18} second request: {status}")
            results = pb.cpu_rounds(targets, args.rounds, args.duration,
                                    lambda port, s: wrk(port, s, args.connections))
            print(f"\n1 KiB JSON ({len(doc)} bytes), {args.connections} connections, medians of {args.rounds} rounds:")
            print(f"{'target':<18} {'CPU us/req':>11}")
            for name, xs in results.items():
                print(f"{name:<18} {pb.median(xs):>11.1f}")
            ng = pb.median(results["nginx proxy_cache"])
            pc = pb.median(results["portcullis cache"])
            print(f"portcullis cache hit / nginx proxy_cache hit: {pc / ng:.2f}")
            per_round = [p / n for p, n in zip(results["portcullis cache"], results["nginx proxy_cache"])]
            print("per round: " + ", ".join(f"{r:.2f}" for r in per_round))
        finally:
            pb.stop_all(procs)


if __name__ == "__main__":
    main()
