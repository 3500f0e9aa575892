"""s3:// inputs (checkpoints, Inception / toy weights, reference .npz): read through the run's storage settings,
cached by endpoint + key + ETag + size, so a replaced object is read again and two stores never collide."""
from __future__ import annotations

import io

import boto3
import numpy as np
import pytest
import torch
from safetensors.torch import save

from accel import checkpoints
from pipeline import evaluation
from pipeline.sinks import read_inputs_with


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    yield tmp_path / "cache"
    checkpoints.use_s3_client(None)


def weights(value: float) -> bytes:
    return save({"w": torch.full((3,), value)})


def test_a_replaced_checkpoint_is_read_again_and_stores_do_not_collide(s3_bucket, cache):
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="ckpt/model.safetensors", Body=weights(1.0))
    uri = f"s3://{bucket}/ckpt/model.safetensors"
    read_inputs_with({"endpoint_url": endpoint, "region": "us-east-1"})  # no AWS_ENDPOINT_URL: the run's setting
    assert checkpoints.read_checkpoint(uri)["w"].tolist() == [1.0] * 3
    assert checkpoints.read_checkpoint(uri)["w"].tolist() == [1.0] * 3  # from the cache
    client.put_object(Bucket=bucket, Key="ckpt/model.safetensors", Body=weights(2.0))
    assert checkpoints.read_checkpoint(uri)["w"].tolist() == [2.0] * 3  # replaced: downloaded again
    assert len(list((cache / "checkpoints").iterdir())) == 2

    other = endpoint.replace("127.0.0.1", "localhost")  # another endpoint (the same server here)
    read_inputs_with({"endpoint_url": other, "region": "us-east-1"})
    assert checkpoints.read_checkpoint(uri)["w"].tolist() == [2.0] * 3
    assert len(list((cache / "checkpoints").iterdir())) == 3  # its own entry
    assert all(bucket not in p.name and "model" not in p.name for p in (cache / "checkpoints").iterdir())


def test_a_replaced_reference_npz_is_read_again(s3_bucket, cache):
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def put(mu: float) -> None:
        buf = io.BytesIO()
        np.savez(buf, mu=np.full(4, mu), sigma=np.eye(4))
        client.put_object(Bucket=bucket, Key="ref/VIRTUAL.npz", Body=buf.getvalue())

    storage = {"endpoint_url": endpoint, "region": "us-east-1"}
    put(1.0)
    first = evaluation._npz_local(f"s3://{bucket}/ref/VIRTUAL.npz", storage)
    put(5.0)
    second = evaluation._npz_local(f"s3://{bucket}/ref/VIRTUAL.npz", storage)
    assert first != second and np.load(second)["mu"][0] == 5.0 and np.load(first)["mu"][0] == 1.0
