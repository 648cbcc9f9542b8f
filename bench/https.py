"""Benchmark: HTTPS, edgecache against nginx proxy_cache with TLS, the same workers, in one run;
and what HTTPS costs edgecache against its own plain HTTP in the same run.

    python bench/https.py [--seconds 5] [--workers 2]

A self-signed ECDSA P-256 certificate is made with `openssl` for the run. Both proxies stand
in front of the same local origin (bench/origin.py) and are warmed first (every answer
measured is a hit). Figures, by wrk over --seconds each: a 64 MiB GET on 1 connection (MiB/s);
1 KiB hits on 64 keep-alive connections (req/s); 1 KiB hits with `Connection: close` on 64
connections, a TLS handshake each (req/s). Over TLS edgecache sends with ordinary writes
(the kernel cannot encrypt what sendfile moves), nginx with SSL_write, also without sendfile.
"""
from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    free_port,
    nginx_proxy,
    nginx_version,
    run_wrk,
    start_edgecache,
    stop,
    wait_port,
    write_random_file,
)

BENCH = Path(__file__).resolve().parent
CLOSE = ("Connection: close",)


def certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def warm(url: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for path in ("/big.bin", "/small.bin", "/big.bin", "/small.bin"):
        with urllib.request.urlopen(url + path, timeout=60, context=context) as r:
            r.read()


def measure(url: str, seconds: int) -> dict[str, float]:
    return {
        "64 MiB GET, 1 connection, MiB/s": run_wrk(url + "/big.bin", connections=1, seconds=seconds,
                                                   threads=1).mib_per_s,
        "1 KiB hits, 64 keep-alive connections, req/s": run_wrk(url + "/small.bin", connections=64,
                                                                seconds=seconds).req_per_s,
        "1 KiB hits, a new connection each, req/s": run_wrk(url + "/small.bin", connections=64, seconds=seconds,
                                                            headers=CLOSE).req_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecache-https-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach their cache and the key
        cert, key = certificate(work)
        key.chmod(0o644)
        origin_dir = work / "origin"
        origin_dir.mkdir()
        write_random_file(origin_dir / "big.bin", 64)
        (origin_dir / "small.bin").write_bytes(os.urandom(1024))
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(BENCH / "origin.py"), str(origin_dir), str(origin_port)],
                                  start_new_session=True)
        wait_port(origin_port, origin)
        rows: dict[str, dict[str, float]] = {}
        try:
            started = nginx_proxy(work, origin_port, args.workers, tls=(cert, key))
            if started is not None:
                proc, port = started
                try:
                    warm(f"https://127.0.0.1:{port}")
                    rows[f"{nginx_version()}, HTTPS"] = measure(f"https://127.0.0.1:{port}", args.seconds)
                finally:
                    stop(proc)
            tls_port = free_port()
            proc, port = start_edgecache(f"http://127.0.0.1:{origin_port}", work / "cache", args.workers,
                                         tls_cert=str(cert), tls_key=str(key), tls_port=str(tls_port),
                                         block_size="4MiB")
            try:
                warm(f"https://127.0.0.1:{tls_port}")
                rows["edgecache, HTTPS"] = measure(f"https://127.0.0.1:{tls_port}", args.seconds)
                rows["edgecache, HTTP"] = measure(f"http://127.0.0.1:{port}", args.seconds)
            finally:
                stop(proc)
        finally:
            stop(origin)
    names = list(rows)
    figures = list(next(iter(rows.values())))
    width = max(len(f) for f in figures)
    print(f"\n{args.workers} workers each, {args.seconds} s a figure\n")
    header = [*names, "edgecache HTTPS / nginx HTTPS", "edgecache HTTPS / HTTP"]
    print(f"| {'':{width}} | " + " | ".join(header) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(n) + 2) for n in header) + "|")
    nginx = next((n for n in names if not n.startswith("edgecache")), None)
    for figure in figures:
        values = [f"{rows[n][figure]:,.0f}" for n in names]
        ours = rows["edgecache, HTTPS"][figure]
        ratio = f"{ours / rows[nginx][figure]:.2f}" if nginx else "-"
        values += [ratio, f"{ours / rows['edgecache, HTTP'][figure]:.2f}"]
        print(f"| {figure:{width}} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
