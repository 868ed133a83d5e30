"""``prom3e serve``: an HTTP service and a web page over a trained run (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress

from prom3e.commands.common import subparser

EXAMPLES = """\
  prom3e serve --model demo-output/run --gallery demo-output/test.parquet \\
      --prototypes demo-output/train.parquet --examples demo-output/test.parquet
      # then open http://127.0.0.1:8000/ (the page) or http://127.0.0.1:8000/docs (the API)
  prom3e serve --model RUN --aligner ALIGN --index image=image.index.safetensors \\
      --index-meta image=gallery.parquet --api-key-env PROM3E_KEY --workers 2
  curl -s localhost:8000/encode -H 'content-type: application/json' \\
      -d '{"rows": [{"loc": [36.97, -122.06], "text": "Plantae Rosaceae Rosa"}]}'

Endpoints: GET /health /schema /examples; POST /encode /reconstruct /retrieve /classify
/next-modality (see docs/SERVE.md). Loopback only unless --host says otherwise.
"""


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    from prom3e.errors import Prom3eError

    out: dict[str, str] = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise Prom3eError(f"{option} wants NAME=FILE, got '{v}'")
        if name.strip() in out:
            raise Prom3eError(f"{option} {name.strip()} given twice")
        out[name.strip()] = path.strip()
    return out


def add_parser(sub) -> None:
    p = subparser(sub, "serve", "Serve a trained run over HTTP: a JSON API and a web page.", EXAMPLES)
    p.add_argument("--model", required=True, help="run folder (written by prom3e train or prom3e demo)")
    p.add_argument("--aligner", help="stage-1 heads (prom3e align --model-out): raw encoder features and raw "
                   "inputs (coordinates, text) through the recorded encoders (default: none, aligned inputs)")
    p.add_argument("--encoders", help='JSON {modality: {"encoder": NAME, "options": {...}}}: the encoders that '
                   "built each modality, where the run/aligner does not record them (default: what they record)")
    p.add_argument("--index", action="append", metavar="NAME=FILE",
                   help="a gallery index of modality NAME (prom3e index build); repeatable (default: none)")
    p.add_argument("--index-meta", action="append", metavar="NAME=TABLE",
                   help="the table an --index was built from: hits come with its metadata; repeatable "
                   "(default: hits are ids only)")
    p.add_argument("--gallery", metavar="TABLE", help="build exact in-memory indexes of every modality of this "
                   "Parquet table (ids = row numbers, hits with its metadata) (default: none)")
    p.add_argument("--prototypes", metavar="TABLE", help="labelled table: class prototypes for /classify "
                   "(default: none, /classify off)")
    p.add_argument("--label", default="species", help="--prototypes' label column (default: species)")
    p.add_argument("--class-modality", help="--prototypes' class modality (default: detected)")
    p.add_argument("--examples", metavar="TABLE", help="table whose first rows the page offers as examples "
                   "(default: none)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key-env", metavar="VAR", help="require the key in this environment variable as the "
                   "X-API-Key header on every endpoint but /health (default: no key)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loads the model (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    p.add_argument("--max-rows", type=int, default=512, help="rows per request (default: 512)")
    p.add_argument("--max-body-bytes", type=int, default=32 * 2**20, help="request body limit (default: 32 MiB)")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow cross-origin calls from this origin (default: none); repeatable")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--seed", type=int, default=0, help="seed of the prototype calibration sample (default: 0)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where to run (default: cpu)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="inference precision (default: auto = bf16 where the CPU/GPU has bf16 matrix units)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from pathlib import Path

    from prom3e.errors import Prom3eError
    from prom3e.serve.service import ServeConfig

    if not 0 <= args.port <= 65535:
        raise Prom3eError(f"--port must be in 0 … 65535, got {args.port}")
    for opt in ("workers", "max_rows"):
        if getattr(args, opt) < 1:
            raise Prom3eError(f"--{opt.replace('_', '-')} must be ≥ 1, got {getattr(args, opt)}")
    if args.threads is not None and args.threads < 1:
        raise Prom3eError(f"--threads must be ≥ 1, got {args.threads}")
    if args.max_body_bytes < 1024:
        raise Prom3eError(f"--max-body-bytes must be ≥ 1024, got {args.max_body_bytes}")
    indexes, index_meta = _pairs(args.index, "--index"), _pairs(args.index_meta, "--index-meta")
    for opt, path in [("--model", args.model), ("--aligner", args.aligner), ("--encoders", args.encoders),
                      ("--gallery", args.gallery), ("--prototypes", args.prototypes), ("--examples", args.examples),
                      *[(f"--index {k}", v) for k, v in indexes.items()],
                      *[(f"--index-meta {k}", v) for k, v in index_meta.items()]]:
        if path is not None and not Path(path).exists():
            raise Prom3eError(f"{opt} {path}: no such file or folder")
    return ServeConfig(model=args.model, aligner=args.aligner, encoders=args.encoders, indexes=indexes,
                       index_meta=index_meta, gallery=args.gallery, prototypes=args.prototypes, label=args.label,
                       class_modality=args.class_modality, examples=args.examples, max_rows=args.max_rows,
                       max_body_bytes=args.max_body_bytes, api_key_env=args.api_key_env,
                       cors_origins=list(args.cors_origin or []), device=args.device, precision=args.precision,
                       threads=args.threads,
                       seed=args.seed)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    from prom3e.errors import Prom3eError

    try:
        import uvicorn

        from prom3e.serve.app import CONFIG_ENV, create_app
        from prom3e.serve.service import Service
    except ImportError as e:
        raise Prom3eError(f"prom3e serve needs FastAPI and uvicorn: pip install 'prom3e[serve]' ({e})") from None
    cfg = config_from_args(args)
    if not _is_loopback(args.host):
        print(f"prom3e serve: warning: binding {args.host} exposes the service beyond this machine"
              + ("" if cfg.api_key_env else "; consider --api-key-env"), file=sys.stderr)
    service = Service(cfg)  # load once here: a bad run, index or table fails now, with one line
    app = create_app(service)
    raw = [m for m in service.modalities if m in service.raw]
    print(f"prom3e serve: {cfg.model} ({', '.join(service.modalities)}); raw inputs: {', '.join(raw) or 'none'}; "
          f"indexes: {', '.join(service.galleries) or 'none'}; prototypes: "
          f"{'yes' if service.prototypes else 'none'}", flush=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"prom3e serve: open http://{host}:{args.port}/ (page) or http://{host}:{args.port}/docs (API)",
          flush=True)
    common = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_level": "info",
              "server_header": False}
    if args.workers == 1:
        uvicorn.run(app, **common)
        return 0
    del app, service
    os.environ[CONFIG_ENV] = json.dumps(cfg.to_dict())
    uvicorn.run("prom3e.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0
