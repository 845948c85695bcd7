"""The inference server bench/gpu_http.py runs in a CRI pod: a PyTorch MLP on the GPU behind ``http.server``.

    python3 infer_server.py DATA_DIR GIB PORT WIDTH

Random fp32 weights (fixed seed) fill GIB of GPU memory; ``POST /v1/infer`` takes float32 rows of WIDTH and answers
the model's output rows, ``GET /v1/digest`` a digest of the weights. Responses carry no Date or Server header, so the
same request gets the same bytes. Once listening it starts infer_client.py (one kept-open connection) beside it and
writes DATA_DIR/ready.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, needed by the next line's mode
import torch  # noqa: E402

d, gib, port, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(1234)
torch.use_deterministic_algorithms(True)
layers = max(1, round(gib * (1 << 30) / (width * width * 4)))
weights = [torch.randn(width, width, device="cuda") / width ** 0.5 for _ in range(layers)]
biases = [torch.randn(width, device="cuda") * 0.01 for _ in range(layers)]
gpu = threading.Lock()


def infer(x):
    with torch.inference_mode():
        for w, b in zip(weights, biases):
            x = torch.nn.functional.gelu(x @ w + b)
        return x


def digest():
    h = hashlib.sha256()
    for t in weights + biases:
        v = t.view(torch.int32).flatten()
        h.update(str(int(v.sum(dtype=torch.int64))).encode())
        h.update(str(int((v[::7] ^ 0x5A5A5A5A).sum(dtype=torch.int64))).encode())
        h.update(v[:4096].cpu().numpy().tobytes())
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype):
        self.send_response_only(code)  # no Date/Server headers: the same request gets the same bytes
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/infer" or len(raw) % (4 * width):
            return self.reply(400, b"POST /v1/infer with float32 rows of %d\n" % width, "text/plain")
        x = torch.frombuffer(bytearray(raw), dtype=torch.float32).view(-1, width)
        with gpu:
            y = infer(x.cuda()).cpu()
        self.reply(200, y.numpy().tobytes(), "application/octet-stream")

    def do_GET(self):
        if self.path != "/v1/digest":
            return self.reply(404, b"not found\n", "text/plain")
        with gpu:
            body = json.dumps({"digest": digest(), "layers": layers}).encode()
        self.reply(200, body, "application/json")


srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
srv.daemon_threads = True
infer(torch.zeros(1, width, device="cuda"))
torch.cuda.synchronize()
client = subprocess.Popen([sys.executable, os.path.join(d, "infer_client.py"), d, str(port)],
                          stdin=subprocess.DEVNULL)
with open(os.path.join(d, "ready.tmp"), "w") as f:
    json.dump({"pid": os.getpid(), "client_pid": client.pid, "layers": layers, "digest": digest()}, f)
os.replace(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
srv.serve_forever()
