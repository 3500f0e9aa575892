"""Batched speculative decoding for LlamaGen: drafters, exact verification, the step loop.

One engine (`SpeculativeDecoder`) serves accel=speculative, lantern and sjd, for a batch of any
size. Each step, per row:

  1. the drafter proposes gamma tokens d_1..d_gamma with their draft distributions q_1..q_gamma;
  2. the target scores [last committed token, d_1..d_gamma] in one cached forward (CFG on: the same
     tokens go to the conditional and the null half), giving p_0..p_gamma after guidance,
     temperature, top-k and top-p;
  3. the acceptance rule accepts a prefix: d_i is kept when u_i <= p~(d_i) / q_i(d_i), where p~ = p for
     exact speculative sampling (Leviathan et al., Chen et al.) and p~ is LANTERN's relaxed target
     (accel/methods/lantern.py). At the first rejection a token is drawn from the residual
     norm(max(0, p - q)); if every allowed draft is kept a bonus token is drawn from p_gamma;
  4. every row advances by its own a + 1 tokens. The KV caches index keys by position and a query only
     sees keys at positions <= its own, so rolling a row back is just setting its length
     (accel.families.llamagen.network.KVCache).

Greedy mode (greedy=True) replaces the draws by argmax: a draft is kept while it equals the argmax of
the target (with p(d) replaced by p~(d) under LANTERN), which reproduces plain greedy decoding exactly
when nothing is relaxed.

Drafters (one interface: `start`, `propose`, `commit`, `forwards`):
  * `ModelDrafter`: a smaller LlamaGen sharing the tokenizer and vocabulary, with its own KV cache and
    CFG; gamma cached forwards per step (the first one also feeds the token it missed when the whole
    draft was accepted). draft_mode="sample" draws drafts from q (exact); "argmax" proposes the
    drafter's top-1 token with q = one-hot, as LANTERN's EAGLE drafts are treated (q(x) = 1).
  * `JacobiDrafter`: Speculative Jacobi Decoding (Teng et al. 2024), no extra model. A window of L
    draft tokens; the draft distribution of a token is the target's distribution at that position from
    the previous iteration (one-hot for freshly initialised tokens: random, or repeat the token to the
    left in the same image row). After verification the unaccepted positions are redrawn from the
    current target distributions (the Jacobi update) and new tokens are appended to keep L.

Conditions: class ids (c2i) or a TextCondition of prompt features (t2i) go to the target and a model
drafter unchanged (lg.CFGModel.prefill builds the null half for either); nothing else here depends on
the kind of condition.

Per-sample randomness: row b draws only with generators[b] and the number of draws depends only on
row b's own progress, so a sample does not depend on its batch-mates (up to floating-point effects).

Options (load_generator(..., accel=..., **options)):
  drafter            a smaller llamagen_* name, "sjd", or "auto" (default: the model's default drafter,
                     llamagen_b for the larger 256 px models, llamagen_b_384 at 384 px, sjd for
                     llamagen_b and the t2i models (no smaller t2i network was released),
                     llamagen_tiny_draft for llamagen_tiny, llamagen_t2i_tiny_draft for llamagen_t2i_tiny,
                     llamagen_toy_draft for llamagen_toy)
  drafter_checkpoint released weights of the drafter (needed unless random_init=True, or the drafter is a
                     toy model with committed weights: llamagen_toy_draft loads them by default)
  gamma              draft tokens per step for a model drafter (default 4)
  window             SJD window length L, draft tokens per forward (default 15: the release's
                     max_num_new_tokens = 16 counts the committed token fed with them; with
                     accel=speculative drafter=sjd, gamma is taken as the window when window is not given)
  draft_mode         "sample" (default) or "argmax"
  sjd_init           "random" (default) or "repeat"
  lantern_k, lantern_delta, lantern_lambda   (accel=lantern) see accel/methods/lantern.py
  drafter=eagle      LANTERN's release: an EAGLE head (accel/methods/eagle.py) drafts a tree per step, verified
                     in one target forward (accel/methods/tree.py); its weights: drafter_checkpoint, or the
                     committed <model>_eagle of a toy model
  tree               (drafter=eagle) "dynamic" (default; EAGLE-2's trees, the release's LANTERN) or "static"
                     (LANTERN++: the release's naive_extend_57 tree of drafter samples, verified with q)
  tree_tokens, tree_depth, tree_top_k   the dynamic tree's shape: 59, 4, 10 as released
accel=sjd is speculative with drafter=sjd.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.errors import ArgenError
from accel.families import llamagen as lg
from accel.options import check_option_names, option_int, parse_options
from accel.registry import Method
from accel.methods.tree import NAIVE_EXTEND_57, StaticTree, TreeShape
from accel.sampling import categorical_rows

SJD_WINDOW = 15  # the release's 16-token Jacobi forward: the last committed token and 15 drafts
_SPEC = ("drafter", "drafter_checkpoint", "gamma", "window", "draft_mode", "sjd_init", "tree", "tree_tokens",
         "tree_depth", "tree_top_k")
TREE_OPTIONS = ("tree", "tree_tokens", "tree_depth", "tree_top_k")
OPTIONS = {
    "speculative": _SPEC,
    "lantern": _SPEC + ("lantern_k", "lantern_delta", "lantern_lambda"),
    "sjd": ("drafter", "window", "sjd_init", "draft_mode"),
}


@dataclass
class SpeculativeOptions:
    """The options of accel=speculative / lantern / sjd as given, typed by accel.options.parse_options (None:
    the default applies, which may depend on the drafter); SpecConfig.from_options checks how they combine."""
    drafter: str = "auto"
    drafter_checkpoint: str | None = None
    gamma: int | None = None
    window: int | None = None
    draft_mode: str = "sample"
    sjd_init: str = "random"
    tree: str | None = None
    tree_tokens: int | None = None
    tree_depth: int | None = None
    tree_top_k: int | None = None
    lantern_k: int = 1000
    lantern_delta: float = 0.1
    lantern_lambda: float | None = None


@dataclass
class SpecConfig:
    accel: str
    drafter: str = "sjd"
    drafter_checkpoint: str | None = None
    gamma: int = 4
    draft_mode: str = "sample"
    sjd_init: str = "random"
    lantern_k: int = 1000
    lantern_delta: float = 0.1
    lantern_lambda: float | None = None
    tree: TreeShape | StaticTree | None = None  # drafter=eagle: the draft tree

    @classmethod
    def from_options(cls, accel: str, target_name: str, options: dict, default_drafter: str,
                     random_init: bool = False) -> "SpecConfig":
        """Check every option (before any weights are loaded) and fill the defaults."""
        check_option_names(options, OPTIONS[accel], f"accel={accel}")
        o = parse_options(SpeculativeOptions, options, f"accel={accel}")
        drafter = o.drafter
        if accel == "sjd":
            if drafter not in ("auto", "sjd"):
                raise ArgenError(f"accel=sjd drafts with the target itself; drafter={drafter!r} does not apply "
                                 f"(use accel=speculative drafter={drafter} for a drafter model)")
            drafter = "sjd"
        if drafter == "auto":
            drafter = default_drafter
        if drafter not in ("sjd", "eagle") and drafter not in lg.CONFIGS:
            raise ArgenError(f"drafter={drafter!r} is neither 'eagle', 'sjd' nor a LlamaGen model; "
                             f"choose 'eagle', 'sjd' or one of {', '.join(lg.CONFIGS)}")
        spec = cls(accel=accel, drafter=drafter)
        spec.drafter_checkpoint = o.drafter_checkpoint
        # the job configs pass every option, None (or tree=dynamic) where the default applies
        tree = {k: getattr(o, k) for k in TREE_OPTIONS if getattr(o, k) is not None}
        if tree.get("tree") == "dynamic" and drafter != "eagle":
            tree.pop("tree")
        if tree and drafter != "eagle":
            raise ArgenError(f"{', '.join(sorted(tree))} shape the draft tree of drafter=eagle, not drafter={drafter}")
        if drafter == "eagle":
            unset = {"gamma": None, "window": None, "sjd_init": "random", "draft_mode": "sample"}
            for key, default in unset.items():
                if getattr(o, key) != default:
                    raise ArgenError(f"{key}={getattr(o, key)!r} does not apply to drafter=eagle: it drafts a tree "
                                     f"of its top-k tokens or samples (shape it with {', '.join(TREE_OPTIONS)})")
            vocab = lg.get_config(target_name).args.vocab_size
            default = TreeShape()
            kind = tree.pop("tree", "dynamic")
            if kind not in ("dynamic", "static"):
                raise ArgenError(f"tree={kind!r}; expected 'dynamic' (EAGLE-2's trees, the release's LANTERN) or "
                                 f"'static' (LANTERN++: the release's naive_extend_57 tree of drafter samples)")
            if kind == "static" and tree:
                raise ArgenError(f"{', '.join(sorted(tree))} shape the dynamic tree; tree=static is the release's "
                                 f"fixed 57-draft tree")
            spec.tree = StaticTree.from_child_counts(NAIVE_EXTEND_57) if kind == "static" else TreeShape(
                tokens=option_int("tree_tokens", tree.get("tree_tokens", default.tokens), 2,
                                  hint="nodes of each draft tree, the root included; the release uses 59"),
                depth=option_int("tree_depth", tree.get("tree_depth", default.depth), 0,
                                 hint="expansions of the tree's frontier; the release uses 4"),
                top_k=option_int("tree_top_k", tree.get("tree_top_k", default.top_k), 1,
                                 hint="children per expanded node; the release uses 10")).check(vocab)
            if spec.drafter_checkpoint is None and not random_init:
                spec.drafter_checkpoint = lg.bundled_checkpoint(f"{target_name}_eagle")
            if spec.drafter_checkpoint is None and not random_init:
                raise ArgenError(f"drafter=eagle for {target_name} has no weights: pass drafter_checkpoint=<the EAGLE "
                                 f"drafter's file, e.g. pytorch_model.bin of jadohu/llamagen_drafter for LlamaGen-T2I> "
                                 f"(accel.options.drafter_checkpoint=... in argen generate), or random_init=True")
        elif drafter == "sjd":
            if spec.drafter_checkpoint is not None:
                raise ArgenError("drafter_checkpoint was given but drafter=sjd uses no drafter model")
            gamma, window = o.gamma, o.window  # with drafter=sjd, gamma means the window
            if gamma is not None and window is not None:
                raise ArgenError(f"gamma={gamma!r} and window={window!r} both set the SJD window; pass only window")
            window = SJD_WINDOW if gamma is None and window is None else (window if gamma is None else gamma)
            spec.gamma = option_int("window", window, 1, hint=f"draft tokens per Jacobi step; {SJD_WINDOW} is the default")
        else:
            if "window" in options:
                raise ArgenError(f"window is the SJD window length; drafter={drafter} takes gamma=<draft tokens per step>")
            if "sjd_init" in options:
                raise ArgenError(f"sjd_init applies to drafter=sjd only, not drafter={drafter}")
            # gamma null in the job configs: the default
            spec.gamma = option_int("gamma", 4 if o.gamma is None else o.gamma, 1, hint="draft tokens per step, e.g. 4")
            check_drafter_config(target_name, drafter)
            if spec.drafter_checkpoint is None and not random_init:  # a toy drafter's committed weights
                spec.drafter_checkpoint = lg.bundled_checkpoint(drafter)
            if spec.drafter_checkpoint is None and not (random_init or lg.get_config(drafter).random_init_only):
                file = lg.released_file(drafter) or "its checkpoint file"
                raise ArgenError(f"drafter {drafter} has no weights: pass drafter_checkpoint=<path of {file}> "
                                 f"(accel.options.drafter_checkpoint=... in argen generate), or random_init=True "
                                 f"(model.random_init=true) for random weights")
        spec.draft_mode = o.draft_mode
        if spec.draft_mode not in ("sample", "argmax"):
            raise ArgenError(f"draft_mode={spec.draft_mode!r}; expected 'sample' (drafts drawn from the drafter, "
                             f"exact) or 'argmax' (top-1 drafts, q = 1)")
        spec.sjd_init = o.sjd_init
        if spec.sjd_init not in ("random", "repeat"):
            raise ArgenError(f"sjd_init={spec.sjd_init!r}; expected 'random' or 'repeat' (copy the token to the left)")
        if accel == "lantern":
            from accel.methods.lantern import check_lantern_options

            vocab = lg.get_config(target_name).args.vocab_size
            spec.lantern_k, spec.lantern_delta, spec.lantern_lambda = check_lantern_options(
                o.lantern_k, o.lantern_delta, o.lantern_lambda, vocab)
        return spec


# ----------------------------------------------------------------------------------------------
# Acceptance rules (the hook LANTERN replaces)
# ----------------------------------------------------------------------------------------------
class ExactRule:
    """Standard speculative sampling: accept d with probability min(1, p(d) / q(d))."""

    exact = True  # nothing relaxed: a tree can test all siblings of a node at once

    def relaxed_prob(self, p: torch.Tensor, drafts: torch.Tensor):
        """p [B, G, V], drafts [B, G] -> (p~(d) [B, G], whether neighbours were aggregated [B, G])."""
        pd = p.gather(-1, drafts[..., None])[..., 0]
        return pd, torch.zeros_like(pd, dtype=torch.bool)

    def residual(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, relaxed: torch.Tensor) -> torch.Tensor:
        """max(0, p - q): what to draw the next token from after rejecting `drafts` ([R, V], [R, V], [R], [R])."""
        return (p - q).clamp_min(0)


def one_hot_probs(tokens: torch.Tensor, vocab: int, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(*tokens.shape, vocab, dtype=dtype, device=tokens.device)
    return out.scatter_(-1, tokens[..., None], 1.0)


def draw_rows(probs: torch.Tensor, rows: list[int], generators: list[torch.Generator]) -> torch.Tensor:
    """probs [B, K, V] -> tokens [B, K]; row b (for b in rows) drawn with generators[b], others argmax."""
    return categorical_rows(probs, generators, rows)


# ----------------------------------------------------------------------------------------------
# Drafters
# ----------------------------------------------------------------------------------------------
class ModelDrafter:
    """A smaller LlamaGen drafting gamma tokens per step (sharing the target's vocabulary)."""

    def __init__(self, model: lg.Transformer, gamma: int, draft_mode: str = "sample"):
        self.model, self.gamma, self.draft_mode = model, gamma, draft_mode

    def start(self, labels, seq, opts: lg.SamplingOptions, generators, vocab: int) -> None:
        B, N = seq.shape
        self.opts, self.generators = opts, generators
        self.runner = lg.CFGModel(self.model, opts, B, self.model.cls_token_num + N + self.gamma + 2, "drafter")
        self.runner.prefill(labels)
        self.forwards = torch.ones(B)  # per row, counted while the row is active
        self.count = torch.zeros(B, dtype=torch.long, device=seq.device)  # image tokens in the drafter's cache

    def propose(self, seq: torch.Tensor, n: torch.Tensor, active: list[int]):
        """-> drafts [B, G] for image tokens n..n+G-1 and their draft distributions q [B, G, V]."""
        N = seq.shape[1]
        greedy = self.opts.greedy or self.draft_mode == "argmax"
        # first forward: the last committed token, preceded by the one the cache misses when the whole
        # previous draft was accepted (else the last token twice, at the same position: identical writes)
        first = torch.where(self.count == n - 2, n - 2, n - 1)
        index = torch.stack([first, n - 1], 1).clamp(min=0, max=N - 1)
        tokens = seq.gather(1, index)
        drafts, qs = [], []
        for j in range(self.gamma):
            logits = self.runner.decode(tokens, index)[:, -1]
            q = lg.logits_to_probs(logits, self.opts)
            if greedy:
                d = q.argmax(-1)
                q = one_hot_probs(d, q.shape[-1], q.dtype)
            else:
                d = draw_rows(q[:, None], active, self.generators)[:, 0]
            drafts.append(d)
            qs.append(q)
            tokens, index = d[:, None], (n + j)[:, None]
        self.forwards[active] += self.gamma
        self.fed_until = n + self.gamma - 1  # tokens 0..n+G-2 are in the cache now
        return torch.stack(drafts, 1), torch.stack(qs, 1)

    def commit(self, n: torch.Tensor, accepted: torch.Tensor, p: torch.Tensor, seq: torch.Tensor, active: list[int]):
        # valid cached tokens: the committed ones up to n-1 and the accepted drafts among d_1..d_{G-1}
        self.count = n + torch.clamp(accepted, max=self.gamma - 1)


class JacobiDrafter:
    """Self-drafting SJD window: no model, drafts come from the target's previous iteration."""

    def __init__(self, window: int, init: str = "random", draft_mode: str = "sample"):
        self.gamma, self.init, self.draft_mode = window, init, draft_mode

    def start(self, labels, seq, opts: lg.SamplingOptions, generators, vocab: int) -> None:
        B, self.N = seq.shape
        self.opts, self.generators, self.vocab = opts, generators, vocab
        self.grid = int(round(self.N ** 0.5))
        self.forwards = torch.zeros(B)  # SJD runs no drafter model
        self.window = torch.zeros(B, self.gamma, dtype=torch.long, device=seq.device)
        self.q = torch.zeros(B, self.gamma, vocab, device=seq.device)
        self.fresh = True

    def _init_tokens(self, b: int, first_index: int, count: int, left: int) -> list[int]:
        """`count` new draft tokens for image tokens first_index.. of row b; `left` = the token before."""
        g = self.generators[b]
        out = []
        for t in range(first_index, first_index + count):
            if self.init == "repeat" and t % self.grid != 0:
                out.append(left)
            else:
                out.append(int(torch.randint(self.vocab, (1,), generator=g, device=g.device)[0]))
            left = out[-1]
        return out

    def propose(self, seq: torch.Tensor, n: torch.Tensor, active: list[int]):
        if self.fresh:  # first step: a window of initialised tokens after token 0
            for b in active:
                toks = self._init_tokens(b, int(n[b]), self.gamma, int(seq[b, int(n[b]) - 1]))
                self.window[b] = torch.tensor(toks, device=seq.device)
            self.q = one_hot_probs(self.window, self.vocab)
            self.fresh = False
        return self.window.clone(), self.q.clone()

    def commit(self, n: torch.Tensor, accepted: torch.Tensor, p: torch.Tensor, seq: torch.Tensor, active: list[int]):
        """n: token counts before the step; p [B, G+1, V]: this iteration's target distributions."""
        G = self.gamma
        greedy = self.opts.greedy or self.draft_mode == "argmax"
        for b in active:
            a = int(accepted[b])
            new_n = int(n[b]) + a + 1
            if new_n >= self.N:
                continue
            # Jacobi update: positions a+1..G predicted tokens n+a+1..n+G from this iteration's context
            probs = p[b, a + 1:]
            if greedy:
                toks = probs.argmax(-1)
                q = one_hot_probs(toks, self.vocab, probs.dtype)
            else:
                toks = categorical_rows(probs[None], [self.generators[b]])[0]
                q = probs
            k = toks.shape[0]
            self.window[b, :k], self.q[b, :k] = toks, q
            if k < G:  # append a freshly initialised tokens
                new = self._init_tokens(b, new_n + k, G - k, int(toks[-1]) if k else int(seq[b, new_n - 1]))
                self.window[b, k:] = torch.tensor(new, device=seq.device)
                self.q[b, k:] = one_hot_probs(self.window[b, k:], self.vocab, self.q.dtype)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class SpeculativeDecoder:
    """Draft, verify in one batched target forward, accept per row, roll back per row."""

    def __init__(self, target: lg.Transformer, drafter, rule, opts: lg.SamplingOptions):
        if isinstance(drafter, ModelDrafter):
            check_compatible(target, drafter.model)
        self.target, self.drafter, self.rule, self.opts = target, drafter, rule, opts

    @torch.no_grad()
    def generate(self, labels, generators: list[torch.Generator]):
        """labels: class ids [B] (c2i) or a TextCondition (t2i) -> (tokens [B, N], counters); FLOPs are counted
        into the scope of accel.flops.counting, where one is open."""
        opts, target, drafter = self.opts, self.target, self.drafter
        B, N, G, device = len(labels), target.block_size, drafter.gamma, labels.device
        if len(generators) != B:
            raise ArgenError(f"{B} labels but {len(generators)} generators")
        runner = lg.CFGModel(target, opts, B, target.cls_token_num + N + G + 2, "target")
        seq = torch.zeros(B, N, dtype=torch.long, device=device)
        seq[:, 0] = lg.pick(lg.logits_to_probs(runner.prefill(labels), opts), opts, generators)
        n = torch.ones(B, dtype=torch.long, device=device)  # committed tokens per row
        drafter.start(labels, seq, opts, generators, target.vocab_size)
        target_forwards = torch.ones(B)
        steps = drafted = accepted_total = 0
        while True:
            active = [b for b in range(B) if int(n[b]) < N]
            if not active:
                break
            drafts, q = drafter.propose(seq, n, active)
            index = (n - 1)[:, None] + torch.arange(G + 1, device=device)[None]  # token indices fed
            fed = torch.cat([seq.gather(1, (n - 1).clamp(max=N - 1)[:, None]), drafts], 1)
            p = lg.logits_to_probs(runner.decode(fed, index), opts)  # [B, G+1, V]; p[:, i] is for token n+i
            limit = torch.clamp(N - n - 1, min=0, max=G)            # drafts that may still be used
            a, nxt = self.verify(p, drafts, q, limit, active, generators)
            for b in active:
                nb, ab = int(n[b]), int(a[b])
                seq[b, nb:nb + ab] = drafts[b, :ab]
                seq[b, nb + ab] = nxt[b]
                target_forwards[b] += 1
                steps += 1
                drafted += int(limit[b])
                accepted_total += ab
            drafter.commit(n, a, p, seq, active)
            act = torch.zeros(B, dtype=torch.bool, device=device)
            act[active] = True
            n = torch.where(act, n + a + 1, n)
        counters = {
            "accepted_length": (accepted_total + steps) / max(steps, 1),   # tokens per verification step
            "acceptance_rate": accepted_total / max(drafted, 1),
            "target_forwards_per_image": float(target_forwards.mean()),
            "target_forward_calls": float(runner.calls),
            "drafter_forwards_per_image": float(drafter.forwards.mean()),
        }
        return seq, counters

    def verify(self, p, drafts, q, limit, active, generators):
        """-> accepted draft counts a [B] (a <= limit) and the token after them [B]."""
        B, G, V = q.shape
        ptilde, relaxed = self.rule.relaxed_prob(p[:, :G], drafts)
        if self.opts.greedy:
            boosted = p[:, :G].scatter(-1, drafts[..., None], ptilde[..., None])
            ok = boosted.argmax(-1) == drafts
        else:
            qd = q.gather(-1, drafts[..., None])[..., 0]
            u = torch.ones(B, G, device=p.device)  # rows not active never accept
            for b in active:
                u[b] = torch.rand(G, generator=generators[b], device=generators[b].device)
            ok = u <= ptilde / qd.clamp_min(1e-30)
        ok = ok & (torch.arange(G, device=p.device)[None] < limit[:, None])
        a = torch.cumprod(ok.long(), dim=1).sum(1)                 # leading accepted drafts
        rows = torch.arange(B, device=p.device)
        p_a = p[rows, a]                                           # target at the first unused position
        if self.opts.greedy:
            return a, p_a.argmax(-1)
        rejected = a < limit
        dist = p_a.clone()
        if bool(rejected.any()):
            r = rows[rejected]
            ar = a[rejected].clamp(max=G - 1)
            res = self.rule.residual(p_a[r], q[r, ar], drafts[r, ar], relaxed[r, ar])
            mass = res.sum(-1, keepdim=True)
            # all mass removed (only possible after a relaxed rejection): fall back to the target
            dist[r] = torch.where(mass > 0, res / mass.clamp_min(1e-30), p_a[r])
        nxt = draw_rows(dist[:, None], active, generators)[:, 0]
        return a, nxt


def check_compatible(target: lg.Transformer, drafter: lg.Transformer, target_name: str = "target",
                     drafter_name: str = "drafter") -> None:
    t, d = target.config, drafter.config
    for what, tv, dv in (("vocabulary size", t.vocab_size, d.vocab_size),
                         ("token grid (block_size)", t.block_size, d.block_size),
                         ("conditioning (model_type)", t.model_type, d.model_type),
                         ("number of classes", t.num_classes, d.num_classes),
                         ("caption feature size", t.caption_dim, d.caption_dim),
                         ("condition tokens", t.cls_token_num, d.cls_token_num)):
        if tv != dv:
            raise ArgenError(f"drafter {drafter_name} has {what} {dv} but target {target_name} has {tv}; "
                             f"the drafter must share the target's tokenizer and token grid")


def check_drafter_config(target_name: str, drafter_name: str) -> None:
    """A drafter must share the target's tokenizer (hence vocabulary) and token grid."""
    tcfg, dcfg = lg.get_config(target_name), lg.get_config(drafter_name)
    t_tok = tcfg.tokenizer_name + (f" {tcfg.tokenizer}" if tcfg.tokenizer else "")
    d_tok = dcfg.tokenizer_name + (f" {dcfg.tokenizer}" if dcfg.tokenizer else "")
    if t_tok != d_tok or tcfg.args.vocab_size != dcfg.args.vocab_size:
        raise ArgenError(f"drafter {drafter_name} uses tokenizer {d_tok} with {dcfg.args.vocab_size} codes but "
                         f"target {target_name} uses {t_tok} with {tcfg.args.vocab_size}; pick a drafter with "
                         f"the same tokenizer (drafter=auto picks one)")
    if tcfg.args.model_type != dcfg.args.model_type:
        kind = {"c2i": "class-to-image", "t2i": "text-to-image"}
        raise ArgenError(f"drafter {drafter_name} is {kind[dcfg.args.model_type]} but target {target_name} is "
                         f"{kind[tcfg.args.model_type]}; the drafter must take the same condition (drafter=auto "
                         f"picks one, drafter=sjd needs none)")
    if tcfg.args.block_size != dcfg.args.block_size:
        raise ArgenError(f"drafter {drafter_name} makes a {dcfg.grid}x{dcfg.grid} token grid but target "
                         f"{target_name} a {tcfg.grid}x{tcfg.grid} grid; pick a drafter of the same image size")


def build_decoder(spec: SpecConfig, *, target: lg.Transformer, target_name: str, opts: lg.SamplingOptions,
                  tokenizer, device: torch.device, random_init: bool):
    target_dtype = next(target.parameters()).dtype  # the generator's precision: drafters run in it too
    if spec.accel == "lantern":
        from accel.methods.lantern import LanternRule

        rule = LanternRule.from_codebook(tokenizer.quantize.embedding.weight, spec.lantern_k, spec.lantern_delta,
                                         spec.lantern_lambda)
    else:
        rule = ExactRule()
    if spec.drafter == "eagle":
        from accel.methods.eagle import build_eagle_head, load_eagle_head
        from accel.methods.tree import EagleTreeDecoder

        if spec.drafter_checkpoint is not None:
            head = load_eagle_head(target, spec.drafter_checkpoint, device)
        else:
            from accel.generator import seeded_init

            with seeded_init(1):
                head = build_eagle_head(target).eval()
        return EagleTreeDecoder(target, head.to(target_dtype), rule, opts, spec.tree)
    if spec.drafter == "sjd":
        drafter = JacobiDrafter(spec.gamma, spec.sjd_init, spec.draft_mode)
    else:
        check_drafter_config(target_name, spec.drafter)
        model = lg.load_model(spec.drafter, spec.drafter_checkpoint, random_init=spec.drafter_checkpoint is None,
                              device=device, what="drafter_checkpoint")
        check_compatible(target, model, target_name, spec.drafter)
        drafter = ModelDrafter(model.to(target_dtype), spec.gamma, spec.draft_mode)
    return SpeculativeDecoder(target, drafter, rule, opts)


def _record(accel: str) -> Method:
    def check(name: str, *, config: lg.LlamaGenConfig, random_init: bool, options: dict) -> SpecConfig:
        return SpecConfig.from_options(accel, name, options, config.default_drafter, random_init)

    return Method(name=accel, family="llamagen", option_names=OPTIONS[accel], check=check, attach=build_decoder)


# exact speculative sampling, LANTERN's relaxed acceptance, and SJD (speculative with the Jacobi drafter)
METHODS = (_record("speculative"), _record("lantern"), _record("sjd"))
