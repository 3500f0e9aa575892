"""Feature extractors for quality evaluation and the per-shard quality record.

The pipeline worker does, per shard (when `eval.features` is not "none"):

    extractor = make_extractor(cfg.eval.features, cfg.eval, device)      # once per actor
    features, logits = extractor(images_uint8)                          # [N, D] float32, [N, K] or None
    write features_key(shard) = encode_npy(features)   # shards/NNNNNN.features.npy, float32 [count, D]
    write logits_key(shard)   = encode_npy(logits)     # shards/NNNNNN.logits.npy, only when logits is not None
    stats["quality"] = shard_quality(features, logits, conditions, images_uint8, extractor=extractor)
    write shards/NNNNNN.stats.json                                       # last: the commit marker

Files (both `.npy`, written with `np.save`, no pickles):
- `shards/NNNNNN.features.npy`: float32 [count, D], row i = sample i of the shard (key NNNNNN_iiiiii);
  D = 2048 (Inception pool3) or 256 (toy).
- `shards/NNNNNN.logits.npy`: float32 [count, K], the extractor's class logits where it has a classifier:
  Inception's 1008-way `logits_unbiased` (what torch-fidelity's Inception Score uses), or the toy
  classifier's 10 class logits. `argen evaluate` computes the Inception Score
  from these files.

For prompt runs (text-to-image) the worker also records a CLIP score per shard when `eval.clip_model`
names a local open_clip folder (`ClipScorer`, `make_clip_scorer`, `clip_record`): quality["clip_score"]
with its model, weights hash and definition. Without that folder the record says
clip_score = None and gives the reason in clip_score_absent; no score is ever made up.

Extractors:
- "inception": torch-fidelity's `inception-v3-compat` (FeatureExtractorInceptionV3), the PyTorch port of
  the TF Inception graph used by the ADM/TTUR FID code. Resize: TF1.x-style bilinear to 299x299 (no
  antialias), then (x - 128) / 128. Weights: the file torch-fidelity downloads, given as a local path or
  s3:// URI in `eval.inception_weights` (read with weights_only=True). Its 1008 outputs follow the TF
  graph's own label order, not ImageNet class ids, so it gives no class-consistency.
- "toy": the toy classifier trained on ToyShapes (accel/toy/classifier.py; area resize to 32x32), whose
  256-d penultimate activations are the toy FID features and whose logits index the toy class ids.
  Weights: the committed accel/toy/weights/toy_classifier.safetensors, or `eval.toy_checkpoint`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.api import ArgenError, resolve_device
from accel.toy.classifier import ToyClassifier

EXTRACTOR_NAMES = ("inception", "toy", "none")

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
INCEPTION_RESIZE = ("torch-fidelity inception-v3-compat: TF1.x bilinear resize to 299x299 "
                    "(align_corners=False, no antialias) of the uint8 image, then (x-128)/128")
INCEPTION_RANDOM_SEED = 0


def encode_npy(array: np.ndarray) -> bytes:
    """The bytes of a .npy file (np.save format, no pickle) for a features or logits object."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise ArgenError(f"{what} is not a readable .npy array ({type(e).__name__}: {e}); "
                         f"delete it and its stats.json so the shard is regenerated") from e


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash of weights (names, dtypes, shapes, values), whatever file format held them."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


@contextlib.contextmanager
def _no_tf32():
    """Feature extraction in true fp32: TF32 matmuls/convs change features (and FID) on Ampere+ GPUs."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class FeatureExtractor:
    """uint8 images [N, H, W, 3] -> (features float32 [N, dim], logits float32 [N, K] or None).

    Attributes: name ("inception" | "toy"), dim, num_classes (K, or None without logits),
    class_aligned (logits index the conditioning class ids, so class-consistency is meaningful),
    resize (the resize/normalisation rule, for reports), weights (sha256 of the weights file, or a
    description of the initialisation), batch_size (fixed: GPU kernels can make features depend on it).
    """

    name: str = ""
    dim: int = 0
    num_classes: int | None = None
    class_aligned: bool = False
    resize: str = ""
    weights: str = ""

    def __init__(self, device: torch.device, batch_size: int):
        if int(batch_size) < 1:
            raise ArgenError(f"eval.batch_size={batch_size} must be a positive number of images")
        self.device, self.batch_size = device, int(batch_size)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "num_classes": self.num_classes, "resize": self.resize,
                "weights": self.weights, "class_aligned": self.class_aligned, "batch_size": self.batch_size}

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def __call__(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        images = np.asarray(images_uint8)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ArgenError(f"{self.name} extractor got images of dtype {images.dtype} and shape "
                             f"{tuple(images.shape)}; expected uint8 [N, H, W, 3]")
        n = images.shape[0]
        feats = np.empty((n, self.dim), np.float32)
        logits = np.empty((n, self.num_classes), np.float32) if self.num_classes else None
        no_autocast = torch.autocast(self.device.type, enabled=False)  # fp32 even inside a caller's autocast
        with torch.inference_mode(), _no_tf32(), no_autocast:
            for start in range(0, n, self.batch_size):
                chunk = np.ascontiguousarray(images[start:start + self.batch_size])
                if not chunk.flags.writeable:  # e.g. rows streamed from an .npz buffer
                    chunk = chunk.copy()
                batch = torch.from_numpy(chunk)
                batch = batch.to(self.device).permute(0, 3, 1, 2)
                f, lg = self._forward(batch)
                feats[start:start + len(batch)] = f.float().cpu().numpy()
                if logits is not None:
                    logits[start:start + len(batch)] = lg.float().cpu().numpy()
        return feats, logits


# -- Inception (torch-fidelity) -------------------------------------------------------------------

_INCEPTION_BUILD_LOCK = threading.Lock()


def _build_tf_inception(state_dict: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 with our weights (or random ones, state_dict=None).

    Its constructor either downloads the weights or unpickles a file with weights_only=False; we hand it
    the state dict we read safely instead, by standing in for its download function during construction.
    """
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class _Inception(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, sd, strict=True, assign=False):  # noqa: ANN001 - torch's signature
            if sd is None:  # random initialisation: keep torch's default init (plumbing tests only)
                return None
            return super().load_state_dict(sd, strict=strict, assign=assign)

    def provide(url: str, *args: Any, **kwargs: Any) -> Mapping[str, torch.Tensor] | None:
        return state_dict

    with _INCEPTION_BUILD_LOCK, mock.patch.object(tfi, "load_state_dict_from_url", provide):
        try:
            return _Inception("inception-v3-compat", ["2048", "logits_unbiased"])
        except RuntimeError as e:
            raise ArgenError(f"eval.inception_weights does not match torch-fidelity's Inception-v3 "
                             f"({str(e).splitlines()[0][:300]}); use the file {INCEPTION_WEIGHTS_FILE} "
                             f"from {INCEPTION_WEIGHTS_URL}") from e


class InceptionExtractor(FeatureExtractor):
    name = "inception"
    dim = 2048
    num_classes = 1008
    class_aligned = False  # TF graph label order (1008 outputs), not the models' ImageNet class ids
    resize = INCEPTION_RESIZE

    def __init__(self, weights: str | None, device: torch.device, batch_size: int = 64, random_init: bool = False):
        super().__init__(device, batch_size)
        if weights:
            from accel.checkpoints import local_path, read_checkpoint, unwrap_state_dict

            path = str(weights)
            if not path.startswith("s3://") and not local_path(path, "eval.inception_weights").is_file():
                raise ArgenError(f"eval.inception_weights={path!r} does not exist; {self.how_to_get()}")
            state = unwrap_state_dict(read_checkpoint(path, "eval.inception_weights"))
            self.weights = state_dict_sha256(state)
        elif random_init:
            state = None
            self.weights = f"random-init(seed={INCEPTION_RANDOM_SEED}) (plumbing only: not a real FID/IS)"
        else:
            raise ArgenError(f"eval.inception_weights is not set; {self.how_to_get()}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INCEPTION_RANDOM_SEED)  # random init is the same network everywhere
            net = _build_tf_inception(state)
        self.net = net.to(device).eval()

    @staticmethod
    def how_to_get() -> str:
        return (f"the Inception extractor needs torch-fidelity's inception-v3-compat weights, the file "
                f"{INCEPTION_WEIGHTS_FILE} (about 91 MB) from {INCEPTION_WEIGHTS_URL} . Nothing is downloaded "
                f"here: fetch it on a machine with internet access (e.g. `curl -LO {INCEPTION_WEIGHTS_URL}`), "
                f"copy it here or to S3, and pass eval.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE}")

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = self.net(images)
        return feats, logits


# -- toy classifier ---------------------------------------------------------------------------------

class ToyExtractor(FeatureExtractor):
    """The trained toy classifier (accel/toy/classifier.py): 256-d penultimate features and 10 class logits."""

    name = "toy"
    dim = ToyClassifier.feature_dim
    resize = "area to 32x32 (no-op for 32x32 images), x/127.5-1"

    def __init__(self, checkpoint: str | None, device: torch.device, batch_size: int = 64):
        super().__init__(device, batch_size)
        from accel.checkpoints import load_strict, read_checkpoint, unwrap_state_dict
        from accel.toy import bundled_weights

        source = checkpoint or bundled_weights("toy_classifier")
        if source is None:
            raise ArgenError("the toy classifier's weights (accel/toy/weights/toy_classifier.safetensors) are "
                             "missing; run `argen train-toy classifier` or pass eval.toy_checkpoint=...")
        state = unwrap_state_dict(read_checkpoint(str(source), "eval.toy_checkpoint"))
        head = state.get("head.weight")
        if head is None or getattr(head, "ndim", 0) != 2:
            raise ArgenError(f"eval.toy_checkpoint={str(source)!r} has no 2-d 'head.weight'; expected a "
                             f"state dict of accel.toy.classifier.ToyClassifier")
        net = ToyClassifier(int(head.shape[0]))
        load_strict(net, state, f"toy classifier {str(source)!r}")
        self.num_classes, self.class_aligned = int(head.shape[0]), True
        self.weights = state_dict_sha256(state)
        self.net = net.to(device).eval()

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.features_and_logits(images.float() / 127.5 - 1.0)


def make_extractor(name: str, eval_cfg: Any, device: str | torch.device | None) -> FeatureExtractor | None:
    """The extractor `name` ("inception" | "toy" | "none" -> None) configured from the `eval:` config section.

    Keys read: inception_weights, inception_random_init (tests only), toy_checkpoint, batch_size.
    """
    name = str(name).lower() if name is not None else "none"
    if name not in EXTRACTOR_NAMES:
        raise ArgenError(f"eval.features={name!r} is not an extractor; choose one of {list(EXTRACTOR_NAMES)}")
    if name == "none":
        return None
    dev = resolve_device(device)
    batch_size = int(_cfg_get(eval_cfg, "batch_size", 64))
    if name == "inception":
        return InceptionExtractor(_cfg_get(eval_cfg, "inception_weights"), dev, batch_size,
                                  random_init=bool(_cfg_get(eval_cfg, "inception_random_init", False)))
    return ToyExtractor(_cfg_get(eval_cfg, "toy_checkpoint"), dev, batch_size)


# -- per-shard quality record ----------------------------------------------------------------------

def class_consistency(logits: np.ndarray, conditions: Sequence[int | str]) -> float | None:
    """Share of samples whose argmax logit is their conditioning class id; None for prompts, and for class
    ids the classifier does not know (e.g. toy features on an ImageNet model): then it is not defined."""
    conds = list(conditions)
    if not conds or any(isinstance(c, (str, bool, np.bool_)) or not isinstance(c, (int, np.integer))
                        for c in conds):
        return None
    labels = np.asarray(conds, dtype=np.int64)
    k = logits.shape[1]
    if ((labels < 0) | (labels >= k)).any():
        return None
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def resize_for_eval(images_uint8: np.ndarray, side: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> uint8 [B, side, side, 3] as LlamaGen's samplers do for --image-size-eval: bicubic
    interpolation (torch, no antialiasing) of the [-1, 1] images, then argen's one quantisation rule. The
    release resizes before its quantisation; here the input is already uint8 (at most half a level apart)."""
    from accel.api import to_uint8

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return to_uint8(F.interpolate(x, size=(side, side), mode="bicubic"))


def eval_image_size(eval_cfg: Mapping[str, Any] | None, model_side: int | None, generated_side: int) -> int | None:
    """The side features are computed at: eval.image_size, else the model's evaluation side (`model_side`, e.g.
    a generator's eval_image_size; None: as generated); None when that is the generated side."""
    side = (eval_cfg or {}).get("image_size") or model_side
    if side is None:
        return None
    if isinstance(side, bool) or not isinstance(side, int) or side < 8:
        raise ArgenError(f"eval.image_size={side!r}; expected a side in pixels (e.g. 256) or null for the model's")
    return None if side == int(generated_side) else side


def classifier_quality(logits: np.ndarray | None, conditions: Sequence[int | str], aligned: bool) -> dict[str, Any]:
    """class_consistency from the extractor's logits when they index the class ids (`aligned`), else None, with
    class_consistency_absent saying why when the class ids fall outside the classifier's classes."""
    cc = class_consistency(np.asarray(logits), conditions) if logits is not None and aligned else None
    out: dict[str, Any] = {"class_consistency": cc}
    if cc is not None:  # per class id: [samples assigned to it, samples], summed over shards by the report
        hits = np.argmax(np.asarray(logits), axis=1) == np.asarray(list(conditions), dtype=np.int64)
        by_class: dict[str, list[int]] = {}
        for c, hit in zip(conditions, hits):
            counts = by_class.setdefault(str(int(c)), [0, 0])
            counts[0] += int(hit)
            counts[1] += 1
        out["class_consistency_by_class"] = by_class
    if cc is None and logits is not None and aligned and not any(isinstance(c, str) for c in conditions):
        out["class_consistency_absent"] = (f"class ids outside the classifier's {np.shape(logits)[1]} classes: "
                                           f"it was trained on other classes than the model's")
    return out


def shard_quality(features: np.ndarray | None, logits: np.ndarray | None, conditions: Sequence[int | str],
                  images_uint8: np.ndarray, extractor: FeatureExtractor | None = None,
                  class_aligned: bool | None = None) -> dict[str, Any]:
    """The quality part of a shard's stats record.

    feature_count: rows of `features` (0 without an extractor); class_consistency: share of samples
    the extractor's classifier assigns to their conditioning class (None without logits, for prompts,
    or unless the logits index the class ids: `extractor.class_aligned`, or `class_aligned` if given);
    image_mean / image_std: over all pixel values of the shard, on the 0..255 scale. With `extractor`,
    also extractor (its name) and extractor_weights (its weights hash), which `argen evaluate` checks
    agree across shards.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ArgenError(f"images have dtype {images.dtype} and shape {tuple(images.shape)}; expected uint8 "
                         f"[N, H, W, 3]")
    n = images.shape[0]
    if len(conditions) != n:
        raise ArgenError(f"{len(conditions)} conditions for {n} images; pass one condition per image")
    for what, arr in (("features", features), ("logits", logits)):
        if arr is not None and (np.ndim(arr) != 2 or np.shape(arr)[0] != n):
            raise ArgenError(f"{what} have shape {tuple(np.shape(arr))}; expected [{n}, ...] (one row per image)")
    if features is not None and extractor is not None and np.shape(features)[1] != extractor.dim:
        raise ArgenError(f"features have dimension {np.shape(features)[1]} but the {extractor.name} extractor "
                         f"gives {extractor.dim}")
    aligned = class_aligned if class_aligned is not None else bool(extractor is not None and extractor.class_aligned)
    out: dict[str, Any] = {
        "feature_count": int(0 if features is None else np.shape(features)[0]),
        **classifier_quality(logits, conditions, aligned),
        **_pixel_mean_std(images),
    }
    if extractor is not None:
        out["extractor"] = extractor.name
        out["extractor_weights"] = extractor.weights
    return out


def _pixel_mean_std(images: np.ndarray, chunk: int = 64) -> dict[str, float | None]:
    """Mean and std of all pixel values, exact (integer sums), in chunks so memory stays small."""
    total = images.size
    if total == 0:
        return {"image_mean": None, "image_std": None}
    s = sq = 0
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].astype(np.int64)
        s += int(x.sum())
        sq += int((x * x).sum())
    mean = s / total
    var = (sq * total - s * s) / (total * total)
    return {"image_mean": float(mean), "image_std": float(max(var, 0.0) ** 0.5)}


# -- CLIP score of prompt runs ---------------------------------------------------------------------

CLIP_PREFIX = "A photo depicts "
CLIP_DEFINITION = ("mean over the shard's samples of the cosine similarity between the open_clip image embedding "
                   "and the text embedding of 'A photo depicts ' + prompt (as LANTERN's eval_fid_clip.py, after "
                   "Hessel et al. 2021); not scaled by 100, not clipped at 0")
CLIP_HOW_TO = ("eval.clip_model takes a local open_clip folder (open_clip_config.json and its weights). For the "
               "ViT-B/32 that LANTERN reports, run on a machine with internet access `hf download "
               "timm/vit_base_patch32_clip_224.openai --local-dir clip-vit-b-32` (older huggingface_hub: "
               "`huggingface-cli download ...`), copy the folder next to the "
               "workers and pass eval.clip_model=/path/to/clip-vit-b-32")


class ClipScorer:
    """CLIP score of (image, prompt) pairs with an open_clip model read from a local folder.

    `__call__(images_uint8 [N, H, W, 3], prompts)` -> float32 [N] cosine similarities (see
    CLIP_DEFINITION). Images go through the folder's own evaluation transform (resize, centre crop,
    normalisation from open_clip_config.json); prompts through its tokenizer (truncated to its context).
    """

    def __init__(self, folder: str, device: torch.device, batch_size: int = 64):
        from accel.checkpoints import local_folder

        path = local_folder(folder, "eval.clip_model", CLIP_HOW_TO)
        if not path.is_dir() or not (path / "open_clip_config.json").is_file():
            raise ArgenError(f"eval.clip_model={folder!r} is not a folder with open_clip_config.json. {CLIP_HOW_TO}")
        weights = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
        if not weights:  # open_clip would go on with random weights: never score with those
            raise ArgenError(f"eval.clip_model={folder!r} holds no weights file (.safetensors, .bin or .pth); "
                             f"{CLIP_HOW_TO}")
        if int(batch_size) < 1:
            raise ArgenError(f"eval.batch_size={batch_size} must be a positive number of images")
        try:
            import open_clip
        except ImportError as e:
            raise ArgenError("the CLIP score needs the `open_clip_torch` package (a dependency of argen); "
                             "reinstall argen with `pip install -e .`") from e
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            detail = " ".join(str(e).split())[:400]
            raise ArgenError(f"eval.clip_model={folder!r} cannot be loaded by open_clip ({type(e).__name__}: "
                             f"{detail}); {CLIP_HOW_TO}") from e
        self.model = model.float().eval()
        self.preprocess = preprocess
        self.device, self.batch_size = device, int(batch_size)
        self.name = path.name
        self.weights = state_dict_sha256(self.model.state_dict())

    def describe(self) -> dict[str, Any]:
        return {"clip_model": self.name, "clip_weights": self.weights, "clip_definition": CLIP_DEFINITION}

    def __call__(self, images_uint8: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        from PIL import Image

        images = np.asarray(images_uint8)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ArgenError(f"CLIP score got images of dtype {images.dtype} and shape {tuple(images.shape)}; "
                             f"expected uint8 [N, H, W, 3]")
        if len(prompts) != images.shape[0] or any(not isinstance(p, str) for p in prompts):
            raise ArgenError(f"CLIP score needs one text prompt per image; got {len(prompts)} conditions for "
                             f"{images.shape[0]} images")
        out = np.empty(images.shape[0], np.float32)
        no_autocast = torch.autocast(self.device.type, enabled=False)
        with torch.inference_mode(), _no_tf32(), no_autocast:
            for s in range(0, images.shape[0], self.batch_size):
                chunk = images[s:s + self.batch_size]
                pixels = torch.stack([self.preprocess(Image.fromarray(im)) for im in chunk]).to(self.device)
                tokens = self.tokenizer([CLIP_PREFIX + p for p in prompts[s:s + self.batch_size]]).to(self.device)
                img = self.model.encode_image(pixels).float()
                txt = self.model.encode_text(tokens).float()
                out[s:s + len(chunk)] = F.cosine_similarity(img, txt, dim=-1).cpu().numpy()
        return out


def make_clip_scorer(eval_cfg: Any, device: str | torch.device | None) -> ClipScorer | None:
    """The scorer of `eval.clip_model`, or None when it is not set (then `clip_absent_reason`)."""
    folder = _cfg_get(eval_cfg, "clip_model")
    if not folder:
        return None
    return ClipScorer(str(folder), resolve_device(device), int(_cfg_get(eval_cfg, "batch_size", 64)))


CLIP_NOT_CONFIGURED = "eval.clip_model is not set (no local CLIP checkpoint); " + CLIP_HOW_TO


def clip_record(similarities: Sequence[np.ndarray] | None, scorer: ClipScorer | None,
                absent_reason: str = CLIP_NOT_CONFIGURED) -> dict[str, Any]:
    """The CLIP part of a prompt shard's quality record: the score with its model, or None with the reason."""
    if scorer is None or similarities is None:
        return {"clip_score": None, "clip_score_absent": absent_reason}
    sims = np.concatenate([np.asarray(s, dtype=np.float64) for s in similarities]) if len(similarities) else \
        np.zeros(0)
    if sims.size == 0:
        return {"clip_score": None, "clip_score_absent": "no samples were scored"}
    return {"clip_score": float(sims.mean()), "clip_score_std": float(sims.std()), "clip_score_count": int(sims.size),
            **scorer.describe()}
