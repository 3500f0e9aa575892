"""Prompt features for LlamaGen text-to-image: FLAN-T5-XL through transformers' T5 encoder.

What LlamaGen's t2i samplers do with a batch of prompts, and what `T5TextEncoder.encode` does:

  1. clean each prompt (`clean_prompt`, below);
  2. tokenise with the T5 tokenizer: end-of-sequence token appended, truncated to the window of
     120 tokens, padded on the right to exactly 120;
  3. run the T5 encoder with that attention mask and keep the last hidden state, [B, 120, 2048]
     for FLAN-T5-XL;
  4. left padding (`left_pad`): rotate each row so its prompt tokens sit at the end of the window,
     flip the mask to match, and zero the features of the padding positions.

The generator then attends only to the prompt positions (accel.families.llamagen: the mask hides the
padding keys, and every padding position still sees itself).

The encoder is read from a local directory (`model.text_encoder=/path`), never downloaded here. It
is the Hugging Face repository google/flan-t5-xl as a folder: config.json, the weights (safetensors or
.bin shards; only the encoder half is used) and the tokenizer files (tokenizer.json or spiece.model).
On a machine with internet access:

    hf download google/flan-t5-xl --include '*.json' '*.safetensors' spiece.model --local-dir flan-t5-xl
    (older huggingface_hub versions: huggingface-cli download, same arguments)

then copy the folder next to the workers and pass model.text_encoder=/path/to/flan-t5-xl.

Prompt cleaning. The release cleans every caption twice with the PixArt/DeepFloyd web-caption
cleaner; argen applies its rules, twice, except three that need a URL grammar, an HTML parser
(BeautifulSoup) or ftfy: URLs are not removed, HTML tags are not stripped (entities are unescaped), and
mis-decoded text is not repaired. The rules that change ordinary prompts: URL-style unquoting ('+' and
%xx), lower case, one kind of dash and quote, @handles, #12 and 6-digit numbers removed, the characters
#&@()[]{}|\\/*~ etc. replaced by spaces, more than three '-' or '_' in a prompt all become spaces
("red-and-white t-shirt" -> "red and white t shirt"), codes like "ab1234", "12ab34", "2x4" and sizes
like "1920x1080" removed, a space after a comma or full stop glued to the next word, surrounding quotes
and a leading or trailing ',', '-', ':' etc. stripped. `clean=False` turns cleaning off (the tokenizer
then sees the prompt as given).
"""
from __future__ import annotations

import html
import logging
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from accel.errors import ArgenError
from accel.checkpoints import local_folder

log = logging.getLogger("argen.text")

T5_WINDOW = 120           # LlamaGen's t5-feature-max-len: tokens per prompt, the end token included
FLAN_T5_XL_DIM = 2048     # its hidden size, LlamaGen's caption_dim
FLAN_T5_XL_REPO = "google/flan-t5-xl"
HOW_TO_GET = (f"the text encoder is FLAN-T5-XL ({FLAN_T5_XL_REPO}), read from a local folder; nothing is "
              f"downloaded here. On a machine with internet access run `hf download {FLAN_T5_XL_REPO} "
              f"--include '*.json' '*.safetensors' spiece.model --local-dir flan-t5-xl` (older huggingface_hub: `huggingface-cli download ...`; about 11 GB, "
              f"only the encoder half is used), copy the folder next to the workers and pass "
              f"model.text_encoder=/path/to/flan-t5-xl")

_DASHES = re.compile("[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
                     "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_DOUBLE_QUOTES = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")
_SINGLE_QUOTES = re.compile("[\u2018\u2019]")
_SYMBOLS = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")
_GLUED = re.compile(r"(\D[,./])(?=\w)")
_SPACES = re.compile(r"\s+")
_IMAGE_EXT = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
# removed before the symbols become spaces: (pattern, replacement)
_EARLY = [
    (re.compile(r"<person>"), "person"),
    (re.compile(r"@\w+\b"), ""),                                    # @handles
    (re.compile("[\u31c0-\u9fff]+"), ""),                           # CJK strokes .. unified ideographs
    (re.compile(r"&quot;?|&amp"), ""),
    (re.compile(r"\d{1,3}(?:\.\d{1,3}){3}"), " "),                   # IP addresses
    (re.compile(r"\d:\d\d\s+$"), ""),                                # a trailing id like 3:45
    (re.compile(r"\\n"), " "),                                      # a literal backslash-n
    (re.compile(r"#(?:\d{1,3}|\d{5,})\b"), ""),                      # #12, #123456
    (re.compile(r"\b\d{6,}\b"), ""),
    (re.compile(rf"\S+\.(?:{_IMAGE_EXT})"), ""),                     # file names
    (re.compile(r"[\"']{2,}"), '"'),
    (re.compile(r"\.{2,}"), " "),
]
# after HTML unescaping: codes, shop phrases, sizes
_LATE = [
    (re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b"), ""),                 # ab1234
    (re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"), ""),                 # ab12cd
    (re.compile(r"\b\d+[a-zA-Z]+\d+\b"), ""),                       # 12ab34, 2x4
    (re.compile(r"(worldwide\s+)?(free\s+)?shipping"), ""),
    (re.compile(r"(free\s)?download(\sfree)?"), ""),
    (re.compile(r"\bclick\b\s(?:for|on)\s\w+"), ""),
    (re.compile(rf"\b(?:{_IMAGE_EXT})(\simage[s]?)?"), ""),
    (re.compile(r"\bpage\s+\d+\b"), ""),
    (re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b"), " "),
    (re.compile(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b"), ""),     # 1920x1080 (latin x, cyrillic x, times)
    (re.compile(r"\b\s+:\s+"), ": "),
]


def _clean_once(text: str) -> str:
    t = urllib.parse.unquote_plus(str(text)).strip().lower()
    t = html.unescape(html.unescape(t))  # the release parses HTML here; entities are what ordinary prompts have
    for pattern, replacement in _EARLY[:4]:
        t = pattern.sub(replacement, t)
    t = _DASHES.sub("-", t)
    t = _DOUBLE_QUOTES.sub('"', t)
    t = _SINGLE_QUOTES.sub("'", t)
    for pattern, replacement in _EARLY[4:]:
        t = pattern.sub(replacement, t)
    t = _SYMBOLS.sub(" ", t)
    t = re.sub(r"\s+\.\s+", " ", t)
    if len(re.findall(r"[-_]", t)) > 3:  # this-is-a-slug / words_joined_by_underscores
        t = re.sub(r"[-_]", " ", t)
    t = html.unescape(html.unescape(t)).strip()
    for pattern, replacement in _LATE:
        t = pattern.sub(replacement, t)
    t = _GLUED.sub(r"\1 ", t)
    t = _SPACES.sub(" ", t)
    t = re.sub(r"^[\"']([\w\W]+)[\"']$", r"\1", t)  # surrounding quotes
    t = re.sub(r"^['_,\-:;]", "", t)
    t = re.sub(r"['_,\-:+]$", "", t)
    t = re.sub(r"^\.\S+$", "", t)
    return t.strip()


def clean_prompt(text: str) -> str:
    """The cleaning described in the module docstring, applied twice as the release does; the result is what
    the tokenizer sees."""
    return _clean_once(_clean_once(text))


def left_pad(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded encoder output -> the release's left padding.

    features [B, L, D] with mask [B, L] (1 on the first n_b positions of row b) -> features whose
    last n_b positions hold the prompt tokens in order and whose first L - n_b positions are zero,
    and the matching mask (bool, True on the prompt tokens).
    """
    B, L = mask.shape
    valid = mask.long().sum(1)                                              # n_b
    src = (torch.arange(L, device=mask.device)[None] + valid[:, None]) % L  # position j <- j + n_b (mod L)
    rolled = features.gather(1, src[..., None].expand(-1, -1, features.shape[-1]))
    new_mask = torch.arange(L, device=mask.device)[None] >= (L - valid)[:, None]
    return rolled * new_mask[..., None].to(rolled.dtype), new_mask


@dataclass
class EncodedPrompts:
    """A batch of prompts as the generator takes them (left-padded, padding zeroed)."""

    features: torch.Tensor   # [B, window, D]
    mask: torch.Tensor       # [B, window] bool, True on prompt tokens
    lengths: list[int]       # tokens of each prompt before truncation (end token included), capped at window + 1
    truncated: list[bool]    # prompt longer than the window: its tail was cut


def _transformers():
    try:
        import transformers
    except ImportError as e:  # a dependency of argen; a broken environment says so
        raise ArgenError("the text encoder needs the `transformers` package (a dependency of argen); "
                         "reinstall argen with `pip install -e .`") from e
    return transformers


def check_given(path: str | Path | None) -> None:
    """A text encoder folder is named (not whether it exists: argen generate checks this before Ray starts, and
    the folder may be on the workers only)."""
    if path is None or str(path) == "":
        raise ArgenError(f"no text encoder given (model.text_encoder is null); {HOW_TO_GET}")


class T5TextEncoder:
    """FLAN-T5-XL (or any T5 encoder folder) computing LlamaGen caption features in batches.

    path: local folder with config.json, weights and tokenizer files (see the module docstring).
    feature_dim: the generator's caption_dim, checked against the encoder's hidden size.
    window: tokens per prompt (120 for LlamaGen). dtype: bf16 on CUDA (as the release), fp32 on CPU.
    """

    def __init__(self, path: str | Path | None, device: torch.device, window: int = T5_WINDOW,
                 feature_dim: int | None = FLAN_T5_XL_DIM, clean: bool = True, dtype: torch.dtype | None = None):
        check_given(path)
        path_str = str(path)
        folder = local_folder(path_str, "model.text_encoder", HOW_TO_GET)
        if not folder.is_dir():
            raise ArgenError(f"model.text_encoder={path_str!r} is not a folder; {HOW_TO_GET}")
        if not (folder / "config.json").is_file():
            raise ArgenError(f"model.text_encoder={path_str!r} has no config.json, so it is not a Hugging Face "
                             f"T5 folder; {HOW_TO_GET}")
        tf = _transformers()
        tf.utils.logging.disable_progress_bar()
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ArgenError(f"model.text_encoder={path_str!r}: its tokenizer cannot be loaded "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); the folder needs tokenizer.json or "
                             f"spiece.model as in {FLAN_T5_XL_REPO}") from e
        try:
            model = tf.T5EncoderModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ArgenError(f"model.text_encoder={path_str!r}: the T5 encoder cannot be loaded "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); {HOW_TO_GET}") from e
        hidden = int(model.config.d_model)
        if feature_dim is not None and hidden != int(feature_dim):
            raise ArgenError(f"model.text_encoder={path_str!r} gives {hidden}-dim features but the generator "
                             f"expects caption_dim={feature_dim} (FLAN-T5-XL: {FLAN_T5_XL_DIM}); pass the "
                             f"{FLAN_T5_XL_REPO} folder")
        if tokenizer.pad_token_id is None:
            raise ArgenError(f"model.text_encoder={path_str!r}: the tokenizer has no padding token; expected a "
                             f"T5 tokenizer (pad id 0)")
        if int(window) < 2:
            raise ArgenError(f"text window {window} is too small; LlamaGen uses {T5_WINDOW} tokens")
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.path, self.device, self.window, self.clean, self.dtype = path_str, device, int(window), clean, dtype
        self.tokenizer = tokenizer
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dim = hidden
        self.prompts_seen = 0
        self.prompts_truncated = 0
        self.flops_per_prompt = self._flops_per_prompt()

    def _flops_per_prompt(self) -> float:
        """Analytic FLOPs of one prompt through the encoder: 2 per weight of every linear layer per
        token, plus the attention products (QK^T and AV), over the full padded window."""
        c = self.model.config
        L, inner = self.window, c.num_heads * c.d_kv
        linear = 0
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                linear += module.in_features * module.out_features
        return float(2 * linear * L + c.num_layers * 2 * 2 * L * L * inner)

    def prepare(self, prompts: Sequence[str]) -> list[str]:
        texts = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ArgenError(f"prompt {i} is {p!r}, not text; pass one string per sample")
            t = clean_prompt(p) if self.clean else p
            if not t.strip():
                raise ArgenError(f"prompt {i} ({p!r}) is empty{' after cleaning' if p.strip() else ''}; write a "
                                 f"description of the image (argen does not turn an empty prompt into an "
                                 f"unconditional sample)")
            texts.append(t)
        return texts

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> EncodedPrompts:
        """Prompts -> left-padded features [B, window, D] and mask, in one batched encoder call."""
        texts = self.prepare(prompts)
        # one token more than the window: a prompt that fills it is longer than the window
        probe = self.tokenizer(texts, max_length=self.window + 1, truncation=True, padding=False,
                               add_special_tokens=True)
        lengths = [len(ids) for ids in probe["input_ids"]]
        truncated = [n > self.window for n in lengths]
        batch = self.tokenizer(texts, max_length=self.window, padding="max_length", truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        features, new_mask = left_pad(hidden.float(), mask)
        n_cut = sum(truncated)
        self.prompts_seen += len(texts)
        self.prompts_truncated += n_cut
        if n_cut:
            log.warning("%d of %d prompts in this batch are longer than the text encoder's window of %d tokens and "
                        "were truncated to it (%d of %d prompts so far); shorten them to keep every word",
                        n_cut, len(texts), self.window, self.prompts_truncated, self.prompts_seen)
        return EncodedPrompts(features=features, mask=new_mask, lengths=lengths, truncated=truncated)


def write_random_t5(folder: str | Path, d_model: int = FLAN_T5_XL_DIM, seed: int = 0, num_layers: int = 2,
                    num_heads: int = 2, d_kv: int = 8, d_ff: int = 32) -> Path:
    """Write a tiny, randomly initialised T5 encoder with a character-level tokenizer to `folder`.

    For tests and CPU benchmarks only: it has FLAN-T5-XL's feature size (d_model) and T5's special
    tokens (pad 0, end 1, unknown 2) and structure (relative attention, gated-GELU FFN), so it
    exercises the same loading and encoding path, but its features mean nothing.
    """
    import string

    tf = _transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                      model_max_length=T5_WINDOW)
    fast.save_pretrained(str(folder))
    config = tf.T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
                         num_heads=num_heads, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                         use_cache=False, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.T5EncoderModel(config)
    tf.utils.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    return folder
