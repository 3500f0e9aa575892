"""Shared fixtures: one local Ray cluster per test session, one moto S3 server on 127.0.0.1.

Ray takes ~10 s to start on 2 cores and every actor ~7 s to import torch, so all tests share one
cluster (`ray_cluster`), started only when a test asks for it. Its worker processes inherit the
dummy S3 credentials set here, so actors can reach the moto server.
"""
from __future__ import annotations

import os
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
