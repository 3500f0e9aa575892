"""The shard worker (a Ray actor): holds one Generator; generate -> encode -> write shard -> stats.

Inside a shard, batch k's PNG encoding and tar writing run on a background thread while batch
k+1 is generated. The actor runs with two concurrent calls and a generation lock, so a shard's
upload overlaps the next shard's generation too; the accelerator never waits on I/O. At most two
batches wait for encoding and at most two shards are in memory, however many shards a worker writes.

Order of writes for shard s: tar, features and logits (with eval.features), then the stats file, the
commit marker. Prompt runs: the prompt features are computed inside generate() (the text encoder is part
of the generator), and with eval.clip_model each batch is CLIP-scored next to the feature extraction.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import layout
from pipeline.lease import LeaseLost, holds
from pipeline.plan import ShardTask
from pipeline.shards import ShardTarWriter, sample_metadata, sha256_hex
from pipeline.sinks import LocalSink, S3Sink, read_inputs_with
from pipeline.stats import CounterMerger, dumps_stats, image_moments, moments_to_mean_std, utc_now

MAX_PENDING_BATCHES = 2  # batches generated but not yet encoded: bounds the worker's memory


@dataclass
class WorkerSpec:
    """Everything a worker needs; plain data so it travels to Ray actors. No secrets."""

    worker: str
    model: str
    accel: str
    device: str
    batch_size: int
    sink: LocalSink | S3Sink
    checkpoint: str | None = None
    tokenizer_checkpoint: str | None = None
    random_init: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # model.options + accel.options
    png_compress_level: int = 1
    torch_threads: int | None = None
    features: str = "none"                                  # eval.features: "none" = no extractor
    eval_cfg: dict[str, Any] | None = None
    warmup_condition: int | str | None = None               # one sample generated at load, outside any shard
    code_version: str = ""                                  # the driver's argen version, into every stats record
    kill_shard: int | None = None                           # test hook: this process dies on that shard
    kill_point: str = "generate"                            # "generate" (after batch 1) or "write" (tar written)
    lease_owner: str | None = None                          # the run's lease id: commit only while it holds
    progress: Any = None                                    # the driver's ProgressBoard actor: told every batch
    storage: dict[str, Any] | None = None                   # the run's storage settings: s3:// inputs read so
    compile: Any = "auto"                                   # compile the decoding step: auto | true | false
    precision: str = "auto"                                 # auto (the release's on CUDA) | fp32 | bf16 | fp16


class ShardWorker:
    """Generates whole shards. Use as a Ray actor (see pipeline.driver) or directly in a process."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.generator = None
        self.extractor = None
        self.eval_side: int | None = None  # side the extractor sees, when not the generated one
        self.clip = None  # CLIP scorer of prompt runs (eval.clip_model); None = not configured
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argen-encode")
        self.host = socket.gethostname()

    # -- set-up -------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Load the generator (once) and say what this worker is."""
        with self._load_lock:
            if self.generator is None:
                import torch

                from accel.api import load_generator

                s = self.spec
                read_inputs_with(s.storage)  # checkpoints from s3:// through the run's endpoint and settings
                if s.torch_threads:
                    torch.set_num_threads(int(s.torch_threads))
                self.generator = load_generator(s.model, accel=s.accel, device=s.device, checkpoint=s.checkpoint,
                                                tokenizer_checkpoint=s.tokenizer_checkpoint,
                                                random_init=s.random_init, compile=s.compile,
                                                precision=s.precision, **s.options)
                if s.features and s.features != "none":
                    from pipeline import quality

                    # eval.device when set (e.g. cpu, to leave the GPU to the generator), else the generator's
                    device = (s.eval_cfg or {}).get("device") or str(getattr(self.generator, "device", s.device))
                    self.extractor = _make_extractor(s.features, s.eval_cfg, device)
                    model_side = getattr(self.generator, "eval_image_size", None)
                    self.eval_side = quality.eval_image_size(s.eval_cfg, model_side, self.generator.image_size)
                if self.prompts():
                    from pipeline import quality

                    self.clip = quality.make_clip_scorer(s.eval_cfg, str(getattr(self.generator, "device", s.device)))
                if s.warmup_condition is not None:  # first-call costs (allocations, kernels) not in shard timings
                    # a compiled step compiles per shape: warm up at the shards' batch size
                    rows = s.batch_size if getattr(self.generator, "compiled_parts", None) else 1
                    out = self.generator.generate([s.warmup_condition] * rows, list(range(rows)))
                    if self.extractor is not None:
                        self.extractor(self._for_features(out.images[:1]))
        g = self.generator
        info = {"worker": self.worker_name(), "device": self.device_name(), "image_size": int(g.image_size),
                "num_classes": int(g.num_classes), "pid": os.getpid()}
        compiled = getattr(g, "compiled_parts", None)
        if compiled:  # once per actor; a shard whose last batch is smaller compiles that shape itself
            info["compile_seconds"] = round(sum(part.compile_seconds for part in compiled), 2)
        return info

    def _for_features(self, images: np.ndarray) -> np.ndarray:
        """The images the extractor sees: at eval_side when the model is evaluated at another size."""
        if self.eval_side is None:
            return images
        from pipeline import quality

        return quality.resize_for_eval(images, self.eval_side)

    def prompts(self) -> bool:
        """Whether the generator takes text prompts (then shards get a CLIP record)."""
        return bool(getattr(self.generator, "conditions_are_prompts", False))

    def worker_name(self) -> str:
        return f"{self.spec.worker}@{self.host}:{os.getpid()}"

    def device_name(self) -> str:
        dev = getattr(self.generator, "device", None)
        if dev is None:
            return str(self.spec.device)
        import torch

        dev = torch.device(dev)
        if dev.type == "cuda":
            return f"cuda:{dev.index or 0} ({torch.cuda.get_device_name(dev)})"
        return str(dev)

    # -- test hook ----------------------------------------------------------------------------
    def _maybe_die(self, task: ShardTask, attempt: int, point: str) -> None:
        if self.spec.kill_shard == task.shard and attempt == 0 and self.spec.kill_point == point:
            os._exit(17)  # the whole process dies, as on a lost node or an OOM kill

    # -- one shard ----------------------------------------------------------------------------
    def _encode_batch(self, tar: ShardTarWriter, task: ShardTask, first: int, images: np.ndarray) -> float:
        t0 = time.perf_counter()
        s, g = self.spec, self.generator
        for j in range(images.shape[0]):
            i = first + j
            key = layout.sample_key(task.shard, i)
            meta = sample_metadata(key, task.start + i, task.conditions[i], task.seeds[i], s.model, s.accel,
                                   s.options, int(g.image_size))
            tar.add(key, images[j], meta)
        return time.perf_counter() - t0

    def run_shard(self, task: ShardTask, attempt: int = 0) -> dict[str, Any]:
        """Generate, encode and write one shard; return its stats record (also written, last)."""
        self.load()
        s, bs = self.spec, self.spec.batch_size
        tar = ShardTarWriter(png_compress_level=s.png_compress_level)
        counters = CounterMerger()
        pending: deque[Future] = deque()
        encode_seconds = generate_seconds = feature_seconds = flops = 0.0
        moments = [0.0, 0.0, 0]
        features, logits, kept_images = [], [], []
        clip_sims: list[np.ndarray] = []

        with self._gen_lock:  # one generation at a time; the previous shard's writes go on meanwhile
            started_at, t0 = utc_now(), time.perf_counter()
            for first in range(0, task.count, bs):
                conds = list(task.conditions[first:first + bs])
                seeds = list(task.seeds[first:first + bs])
                tg = time.perf_counter()
                out = self.generator.generate(conds, seeds)
                generate_seconds += time.perf_counter() - tg
                images = out.images
                if images.shape[0] != len(conds):
                    raise RuntimeError(f"{s.model} returned {images.shape[0]} images for {len(conds)} conditions")
                flops += float(out.stats.get("flops", 0.0) or 0.0) * len(conds)  # stats["flops"] is per image
                counters.add(out.stats)
                if self.extractor is not None:
                    tf = time.perf_counter()
                    f, lg = self.extractor(self._for_features(images))
                    feature_seconds += time.perf_counter() - tf
                    features.append(np.asarray(f, dtype=np.float32))
                    if lg is not None:
                        logits.append(np.asarray(lg))
                    kept_images.append(images)
                else:
                    m = image_moments(images)
                    moments = [moments[0] + m[0], moments[1] + m[1], moments[2] + m[2]]
                if self.clip is not None:
                    tf = time.perf_counter()
                    clip_sims.append(self.clip(images, conds))
                    feature_seconds += time.perf_counter() - tf
                while len(pending) >= MAX_PENDING_BATCHES:
                    encode_seconds += pending.popleft().result()
                pending.append(self._encoder.submit(self._encode_batch, tar, task, first, images))
                if s.progress is not None:  # not waited for: the bar is told, the accelerator goes on
                    s.progress.update.remote(task.shard, attempt, first + len(conds))
                self._maybe_die(task, attempt, "generate")
        # outside the lock: the next shard can generate while this one finishes and uploads
        while pending:
            encode_seconds += pending.popleft().result()
        data = tar.finish()
        digest = sha256_hex(data)

        tw = time.perf_counter()
        s.sink.write(layout.tar_key(task.shard), data)
        self._maybe_die(task, attempt, "write")
        if self.extractor is not None:
            from pipeline import quality

            feats = np.concatenate(features)
            all_logits = np.concatenate(logits) if logits else None
            s.sink.write(layout.features_key(task.shard), quality.encode_npy(feats))
            if all_logits is not None:
                s.sink.write(layout.logits_key(task.shard), quality.encode_npy(all_logits))
            quality_record = quality.shard_quality(feats, all_logits, list(task.conditions),
                                                   np.concatenate(kept_images), extractor=self.extractor)
            quality_record["feature_image_size"] = self.eval_side or int(self.generator.image_size)
        else:
            mean, std = moments_to_mean_std(*moments)
            quality_record = {"feature_count": 0, "class_consistency": None, "image_mean": mean, "image_std": std}
        if self.prompts():
            from pipeline import quality

            quality_record.update(quality.clip_record(clip_sims if self.clip is not None else None, self.clip))
        write_seconds = time.perf_counter() - tw
        seconds = time.perf_counter() - t0

        record = {
            "shard": task.shard, "count": task.count, "attempt": attempt, "worker": self.worker_name(),
            "device": self.device_name(), "model": s.model, "accel": s.accel, "options": s.options,
            "started_at": started_at, "finished_at": utc_now(), "seconds": seconds,
            "generate_seconds": generate_seconds, "encode_seconds": encode_seconds,
            "feature_seconds": feature_seconds, "write_seconds": write_seconds,
            "images_per_second": task.count / seconds if seconds > 0 else 0.0,
            "flops": flops, "flops_per_image": flops / task.count, "counters": counters.result(), "bytes": len(data), "sha256": digest,
            "first_sample": task.start, "quality": quality_record, "argen": s.code_version,
        }
        if s.lease_owner is not None and not holds(s.sink, s.lease_owner):  # fencing: an orphan commits nothing
            raise LeaseLost(f"shard {task.shard} not committed: this run no longer holds output.uri's lease")
        s.sink.write(layout.stats_key(task.shard), dumps_stats(record))  # the commit marker, last
        return record

    def close(self) -> None:
        self._encoder.shutdown(wait=True)


# -- quality hook (pipeline/quality.py, the quality engineer's) ---------------------------------

def _make_extractor(name: str, eval_cfg: dict[str, Any] | None, device: str):
    from pipeline import quality

    return quality.make_extractor(name, eval_cfg, device)
