"""``wav2small serve [MODEL]``: the browser page (src/wav2small/web) on http://127.0.0.1.

The page runs the model in the browser with onnxruntime-web (WebAssembly); the server only hands
out static files: the page, the runtime (``web/vendor``, copied from npm by ``make web``), the
chosen model as ``/model.onnx`` and its facts as ``/model.json``. It listens on 127.0.0.1 only.
Without MODEL the page asks for an ``.onnx`` file.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

from wav2small import LABELS
from wav2small.config import ServeOptions

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = ServeOptions.port
#: The onnxruntime-web files the page loads (copied from npm by ``make web``).
VENDOR_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


def web_root() -> Path:
    """The folder of the page (package data)."""
    return Path(str(files("wav2small") / "web"))


def check_vendor(root: Path | None = None) -> Path:
    """The runtime folder; raises FileNotFoundError naming the missing files and the fix."""
    vendor = (root or web_root()) / "vendor"
    missing = [f for f in VENDOR_FILES if not (vendor / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{vendor}: onnxruntime-web is not installed ({', '.join(missing)} missing); "
            "run `make web` (npm ci + copy) in the repository"
        )
    return vendor


def model_facts(model: str | os.PathLike) -> tuple[Path, dict]:
    """The ONNX file to serve for MODEL (a .onnx or a student folder / hub id) and its facts."""
    from wav2small.backends import OnnxBackend
    from wav2small.hub import resolve_model

    path = Path(resolve_model(model))
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{model}: the page runs ONNX models; export it first (wav2small export)")
    backend = OnnxBackend(path)  # checks: loadable, 16 kHz, A/D/V labels
    labels = backend.metadata.get("labels", ",".join(LABELS)).split(",")
    return path, {
        "name": f"{path.parent.name}/{path.name}",
        "url": "model.onnx",
        "bytes": path.stat().st_size,
        "labels": labels,
        "sample_rate": int(backend.metadata.get("sample_rate", 16000)),
    }


class _Handler(SimpleHTTPRequestHandler):
    model_path: Path | None = None
    facts: dict | None = None

    def guess_type(self, path):  # .mjs/.wasm need exact types for module import / streaming
        return (
            TYPES.get(Path(str(path)).suffix)
            or mimetypes.guess_type(str(path))[0]
            or ("application/octet-stream")
        )

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        route = self.path.split("?", 1)[0]
        if route == "/model.json":
            return self._send(json.dumps(self.facts).encode(), "application/json", self.facts)
        if route == "/model.onnx":
            data = self.model_path.read_bytes() if self.model_path else None
            return self._send(data, "application/octet-stream", data)
        return super().do_GET()

    def _send(self, body: bytes | None, kind: str, present) -> None:
        if not present:
            return self.send_error(404, "no model served")
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        logger.debug("%s " + fmt, self.address_string(), *args)


def make_server(
    model: str | os.PathLike | None = None, *, port: int = DEFAULT_PORT
) -> ThreadingHTTPServer:
    """An HTTP server of the page on 127.0.0.1:``port`` (0: any free port) serving ``model``.

    Raises:
        FileNotFoundError: the runtime is not installed, or no such model.
        ValueError: the model is not a wav2small ONNX model.
    """
    path, facts = model_facts(model) if model is not None else (None, None)  # a bad model first
    root = web_root()
    check_vendor(root)
    handler = type("Handler", (_Handler,), {"model_path": path, "facts": facts})
    return ThreadingHTTPServer((HOST, port), partial(handler, directory=str(root)))


def serve_cli(args) -> int:
    """``wav2small serve [MODEL] [--port N]``."""
    server = make_server(args.model, port=args.port)  # errors: one line, exit 2 (cli.main)
    host, port = server.server_address[:2]
    print(f"serving the wav2small page on http://{host}:{port}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


__all__ = ["check_vendor", "make_server", "model_facts", "serve_cli", "web_root"]
