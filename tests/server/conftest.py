"""Server test fixtures: a real `gyges serve` process on a tiny model, shared by the HTTP tests."""
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_tiny_model

API_KEY = "test-key"
# word-level tiny tokenizer: a chat template of our own (the --chat-template flag)
CHAT_TEMPLATE = "{% for m in messages %}w10 {{ m['content'] }} w11 {% endfor %}{% if add_generation_prompt %}w12{% endif %}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    model: str
    proc: subprocess.Popen

    def children(self) -> list[int]:
        out = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
        return out


def start_server(model, *args: str, timeout: float = 180) -> Server:
    """`gyges serve` on a free port (`model` None: the embedded default), once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gyges.cli", "serve", *([str(model)] if model else []),
                             "--port", str(port),
                             "--log-level", "warning", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=Path(__file__).parents[2])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gyges serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(url, str(model), proc)
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"gyges serve did not become healthy in {timeout} s:\n{proc.stdout.read()}")


def stop_server(server: Server, timeout: float = 60) -> str:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(server.proc.pid, signal.SIGKILL)
        raise
    return server.proc.stdout.read()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """Two TP1 devices on a tiny float32 Llama; 0.95 MiB each holds 224 KV tokens, under the 256-token
    context, so a prompt can fit the context yet exceed every instance. One per module (a test may
    stop it)."""
    server = start_server(*tiny_serve_args(tmp_path_factory.mktemp("serve")), "--api-key", API_KEY)
    yield server
    stop_server(server)


def tiny_serve_args(tmp: Path) -> list[str]:
    model = make_tiny_model(tmp / "tiny-llama", "llama")
    (tmp / "chat.jinja").write_text(CHAT_TEMPLATE)
    return [str(model), "--devices", "2", "--device-memory", "0.95MiB", "--dtype", "float32", "--policy", "static",
            "--max-model-len", "256", "--served-model-name", "tiny", "--chat-template", str(tmp / "chat.jinja"),
            "--max-num-seqs", "16"]
