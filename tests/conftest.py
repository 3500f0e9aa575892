"""Shared fixtures: one local Ray cluster per test session, one moto S3 server on 127.0.0.1.

Ray takes ~10 s to start on 2 cores and every actor ~7 s to import torch, so all tests share one
cluster (`ray_cluster`), started only when a test asks for it. Its worker processes inherit the
dummy S3 credentials set here, so actors can reach the moto server.
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import torch

# One torch thread in the test process, set once here for the whole session: the suite shares 2 cores
# with the Ray actors it starts, and results must not depend on which test file was collected first.
torch.set_num_threads(1)

# Never reach a real cloud from tests: dummy credentials, no instance-metadata lookups.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "ARGENTESTKEYID0000000",
    "AWS_SECRET_ACCESS_KEY": "argen-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "RAY_USAGE_STATS_ENABLED": "0",
}


@pytest.fixture(scope="session")
def aws_env():
    old = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    yield TEST_ENV
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(aws_env):
    """A local Ray cluster with 2 CPUs for the whole session (started on first use)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_server(aws_env):
    """A moto S3 server over real HTTP on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_bucket(moto_server):
    """A fresh, empty bucket on the moto server: (endpoint_url, bucket name)."""
    import boto3

    name = f"argen-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return moto_server, name


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of `target` (host, port), for storage outages in tests.

    down(): stop listening and cut every open connection (clients get refused / reset, as when a store or
    its network goes away); up(): listen again on the same port. silent=True: accept connections and never
    answer (an endpoint that hangs)."""

    def __init__(self, target: tuple[str, int] | None, silent: bool = False):
        import socket

        self.target, self.silent = target, silent
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._conns: list = []
        self._listener = None
        self._stop = threading.Event()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger a moment after down()
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.down()

    def _accept(self, listener) -> None:
        import socket

        while not self._stop.is_set():
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
            if self.silent:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture()
def tcp_proxy():
    """Factory of TcpProxy objects, all closed after the test."""
    made: list[TcpProxy] = []

    def make(target: tuple[str, int] | None, silent: bool = False) -> TcpProxy:
        made.append(TcpProxy(target, silent))
        return made[-1]

    yield make
    for p in made:
        p.close()
