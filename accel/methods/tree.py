"""Speculative decoding with dynamic draft trees (EAGLE-2, as LANTERN releases it for LlamaGen), batched.

Each step, for every row:

  1. draft a tree: from the EAGLE drafter's output at the last committed token (the root), take its top_k
     next tokens; then `depth` times feed the top_k best frontier nodes (by cumulative drafter
     log-probability) and take each one's top_k children. Of the top_k + depth * top_k^2 candidates keep the
     tokens - 1 best by cumulative log-probability (a parent always outranks its children) as the tree's
     nodes, the root in front. The drafter's distribution is guided (CFG) and filtered (temperature, top-k,
     top-p) as the target's is, as the release does;
  2. verify the whole tree in ONE target forward: every node sits in its own cache slot, turns with the
     position of its depth (RoPE) and sees the row's context and its own ancestors (tree mask);
  3. accept, level by level from the root: the children of the current node are tried in the drafter's
     order, each as a certain draft (q = 1): kept when u <= p~(x), else p(x) is zeroed (with LANTERN also
     x's first k+1 latent neighbours when x borrowed their mass) and p renormalised before the next
     sibling. The token after the accepted path is drawn from the last node's p, or from what is left of it
     when a sibling was rejected there;
  4. move the accepted path's keys and values to the row's next slots, feed the drafter the new (feature,
     token) pairs, and drop rows that are complete from the batch.

Greedy decoding (greedy=True) keeps a child while it is the argmax of the (relaxed) target at its parent and
ends with the target's argmax, so with nothing relaxed it reproduces plain greedy decoding token for token.

Per-sample randomness: every step a row draws a fixed block of uniforms from its own generator (one per
possible candidate try and one for the final token), so its draws do not depend on its batch-mates.
No per-row Python loop runs on the hot path except those draws (one call per row and step).

Counters: accepted_length (tokens per target forward), tree_nodes, target / drafter forwards per image and
the seconds spent drafting and verifying (host clock: exact on CPU, approximate on CUDA).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from accel import flops as F_
from accel.errors import ArgenError
from accel.families import llamagen as lg
from accel.families.llamagen.sample import cfg_rows, guided_logits, logits_to_probs, top_k_top_p_filtering
from accel.methods.eagle import EagleHead

NEG = -1e9  # stands for -inf in cumulative scores, so that a parent still outranks its children


@dataclass(frozen=True)
class TreeShape:
    """The release's dynamic tree for LlamaGen: 59 tokens (58 drafts and the root), 4 expansions of the
    10 best frontier nodes, 10 children each."""
    tokens: int = 59
    depth: int = 4
    top_k: int = 10

    def check(self, vocab: int) -> "TreeShape":
        if not 1 <= self.top_k <= vocab:
            raise ArgenError(f"tree_top_k={self.top_k} must be in [1, {vocab}]; the release uses 10")
        if self.depth < 0:
            raise ArgenError(f"tree_depth={self.depth} must be >= 0; the release uses 4")
        pool = self.top_k + self.depth * self.top_k ** 2
        if not 2 <= self.tokens <= pool + 1:
            raise ArgenError(f"tree_tokens={self.tokens} must be in [2, {pool + 1}] (the root plus at most "
                             f"top_k + depth * top_k^2 = {pool} candidates); the release uses 59")
        return self


# LANTERN++'s static tree (the release's naive_extend_57: 57 drafts in 5 levels), written as how many children
# each node has, keyed by the node's path of sibling ranks from the root
NAIVE_EXTEND_57 = {
    (): 5,
    (0,): 4, (1,): 3, (2,): 3, (3,): 2, (4,): 1,
    (0, 0): 4, (0, 1): 3, (0, 2): 3, (0, 3): 2, (1, 0): 2, (1, 1): 1, (2, 0): 1,
    (0, 0, 0): 4, (0, 0, 1): 3, (0, 0, 2): 2, (0, 0, 3): 1, (0, 1, 0): 2, (0, 1, 1): 1, (0, 2, 0): 1,
    (0, 0, 0, 0): 3, (0, 0, 0, 1): 2, (0, 0, 1, 0): 2, (0, 0, 1, 1): 1, (0, 0, 2, 0): 1,
}


@dataclass(frozen=True)
class StaticTree:
    """A fixed tree: nodes in level order, the root first; children of a node are its drafter's samples
    without replacement, in the order drawn."""
    parent: tuple[int, ...]
    depth: tuple[int, ...]
    rank: tuple[int, ...]      # the node's place among its siblings

    @classmethod
    def from_child_counts(cls, counts: dict[tuple[int, ...], int]) -> "StaticTree":
        paths = [()]
        for path in paths:  # breadth first: a node's children follow every node of its level
            paths.extend(path + (r,) for r in range(counts.get(path, 0)))
        index = {path: i for i, path in enumerate(paths)}
        return cls(parent=tuple(index[p[:-1]] if p else -1 for p in paths), depth=tuple(len(p) for p in paths),
                   rank=tuple(p[-1] if p else 0 for p in paths))

    @property
    def tokens(self) -> int:
        return len(self.parent)

    @property
    def levels(self) -> int:
        return max(self.depth)

    @property
    def top_k(self) -> int:  # the most children of one node
        return max(self.parent.count(i) for i in range(len(self.parent)))


@dataclass(frozen=True)
class _StaticLayout:
    """A static tree's fixed structure as tensors, built once per decoder (not on every step)."""
    parent: torch.Tensor     # [M]
    depth: torch.Tensor      # [M]
    ancestors: torch.Tensor  # [M, M] bool, the node itself included
    children: torch.Tensor   # [M, width], -1 padded, in draw order
    levels: tuple            # per level: (parents drawing, their children, child -> parent column, child rank)

    @classmethod
    def of(cls, st: StaticTree, parents: list[int], width: int, device: torch.device) -> "_StaticLayout":
        M = st.tokens
        anc = torch.eye(M, dtype=torch.bool)
        children = torch.full((M, width), -1, dtype=torch.long)
        for i in range(1, M):  # level order: a parent's row is complete before its children's
            anc[i] |= anc[st.parent[i]]
            children[st.parent[i], st.rank[i]] = i
        levels = []
        for level in range(1, st.levels + 1):
            drawing = [i for i in parents if st.depth[i] == level - 1]
            kids = [i for i in range(M) if st.depth[i] == level]
            levels.append((drawing, kids, torch.tensor([drawing.index(st.parent[i]) for i in kids], device=device),
                           torch.tensor([st.rank[i] for i in kids], device=device)))
        return cls(torch.tensor(st.parent, device=device), torch.tensor(st.depth, device=device), anc.to(device),
                   children.to(device), tuple(levels))


@dataclass
class DraftTree:
    tokens: torch.Tensor     # [B, M] node tokens; node 0 is the root (the last committed token)
    parent: torch.Tensor     # [B, M] parent node index, -1 for the root
    depth: torch.Tensor      # [B, M] 0 for the root
    ancestors: torch.Tensor  # [B, M, M] bool: node i sees node j (j an ancestor of i, or i itself)
    children: torch.Tensor   # [B, M, top_k] child node indices in the drafter's order, -1 padded
    q: torch.Tensor | None = None       # static tree: the drafter's distribution at each node [B, M, V]
    q_draw: torch.Tensor | None = None  # static tree: q(x) of each node's token when it was drawn [B, M]


class EagleTreeDecoder:
    """Draft trees from an EAGLE head (dynamic, or LANTERN++'s static tree), verified in one target forward
    per step."""

    def __init__(self, target: lg.Transformer, head: EagleHead, rule, opts: lg.SamplingOptions,
                 shape: TreeShape | StaticTree):
        if head.config.vocab_size != target.vocab_size or head.config.dim != target.config.dim:
            raise ArgenError(f"the EAGLE drafter (width {head.config.dim}, {head.config.vocab_size} codes) does not "
                             f"fit the target (width {target.config.dim}, {target.vocab_size} codes)")
        self.target, self.head, self.rule, self.opts = target, head, rule, opts
        self.static = isinstance(shape, StaticTree)
        self.shape = shape if self.static else shape.check(target.vocab_size)
        if self.static:
            self.levels, self.width = shape.levels, shape.top_k
            self.fed = shape.tokens                    # drafter slots a tree takes (every non-root node)
            self.expansions = shape.levels - 1
            parents = sorted({p for p in shape.parent if p >= 0})
            self.parents = parents                     # nodes that have children, in level order
            self.layout = _StaticLayout.of(shape, parents, self.width, target.output.weight.device)
        else:
            self.levels, self.width = shape.depth + 1, shape.top_k
            self.fed = shape.depth * shape.top_k
            self.expansions = shape.depth

    # -- drafter ------------------------------------------------------------------------------------
    def _draft_logp(self, out: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """Drafter outputs [R, ..., H] (R = 2B with CFG) -> log-probabilities [B, ..., V] of the next token,
        guided and filtered as the target's are."""
        logits = guided_logits(self.target.output(out).float(), self.opts, token_index)
        if not self.opts.greedy:
            logits = logits / max(self.opts.temperature, 1e-5)
            if self.opts.top_k > 0 or self.opts.top_p < 1.0:
                logits = top_k_top_p_filtering(logits, int(self.opts.top_k), self.opts.top_p)
        return torch.log_softmax(logits, -1)

    def _head(self, feats, tokens, rope_pos, slots, mask) -> torch.Tensor:
        cache = self.draft_cache
        cache.kv_len = int(slots.max()) + 1
        out = self.head(feats, tokens, rope_pos=rope_pos, cache=cache, slots=slots, mask=mask)
        F_.count("drafter", self.head.forward_flops(out.shape[0], out.shape[1], cache.kv_len))
        self.drafter_calls += 1
        return out

    def _context(self, feats: torch.Tensor, tokens: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Feed each row's `count` new (feature, token) pairs ([R, T, H], [R, T], padded) after its last
        context index; -> the drafter output at each row's last new pair [R, H]."""
        R, T = tokens.shape
        start = cfg_rows(self.last + 1, self.opts)                           # [R]
        slots = start[:, None] + torch.arange(T, device=tokens.device)[None]
        keys = torch.arange(int(slots.max()) + 1, device=tokens.device)
        mask = (keys[None, None, :] <= slots[:, :, None])[:, None]
        out = self._head(feats, tokens, slots, slots, mask)
        self.last = self.last + count
        pick = cfg_rows(count - 1, self.opts)
        return out[torch.arange(R, device=out.device), pick]

    def _grow(self, root_out: torch.Tensor, n: torch.Tensor, root: torch.Tensor) -> DraftTree:
        """The dynamic tree of every row from the drafter's output at its root [R, H]."""
        k, depth, M = self.shape.top_k, self.shape.depth, self.shape.tokens
        B, dev = len(n), root_out.device
        logp = self._draft_logp(root_out, n)                                  # token n's distribution, [B, V]
        score, tok = logp.clamp_min(NEG).topk(k, dim=-1)                     # level 1: [B, k]
        pool_tok, pool_score = [tok], [score]
        pool_parent = [torch.zeros(B, k, dtype=torch.long, device=dev)]       # pool index + 1; 0 = the root
        pool_depth = [torch.ones(B, k, dtype=torch.long, device=dev)]
        frontier = torch.arange(k, device=dev)[None].expand(B, -1)            # pool indices of the frontier
        feat_in = root_out[:, None].expand(-1, k, -1)                         # each frontier node's parent output
        fed_anc = torch.zeros(B, k, 0, dtype=torch.bool, device=dev)         # frontier rows over fed slots
        base = int(self.last.max()) + 1                                      # first free drafter slot
        ctx_keys = torch.arange(base, device=dev)
        ctx_mask = ctx_keys[None, :] <= self.last[:, None]                   # [B, base]
        for level in range(1, depth + 1):
            fed_tok = torch.gather(torch.cat(pool_tok, 1), 1, frontier)
            own = torch.zeros(B, k, k * level, dtype=torch.bool, device=dev)
            own[:, :, k * (level - 1):] = torch.eye(k, dtype=torch.bool, device=dev)
            fed_anc = torch.cat([fed_anc, torch.zeros(B, k, k, dtype=torch.bool, device=dev)], 2) | own
            mask = torch.cat([ctx_mask[:, None].expand(-1, k, -1), fed_anc], 2)[:, None]
            slots = (base + k * (level - 1) + torch.arange(k, device=dev))[None].expand(B, -1)
            rope = self.last[:, None] + level                                # the position of token n + level - 1
            out = self._head(feat_in, cfg_rows(fed_tok, self.opts), cfg_rows(rope.expand(-1, k), self.opts),
                             cfg_rows(slots, self.opts), cfg_rows(mask, self.opts))   # [R, k, H]
            child_logp = self._draft_logp(out, (n + level)[:, None].expand(-1, k))   # [B, k, V]
            parent_score = torch.gather(torch.cat(pool_score, 1), 1, frontier)
            c_score, c_tok = child_logp.clamp_min(NEG).topk(k, dim=-1)       # [B, k, k]
            c_score = parent_score[..., None] + c_score
            offset = sum(t.shape[1] for t in pool_tok)
            pool_tok.append(c_tok.flatten(1))
            pool_score.append(c_score.flatten(1))
            pool_parent.append((frontier + 1)[..., None].expand(-1, -1, k).flatten(1))
            pool_depth.append(torch.full((B, k * k), level + 1, dtype=torch.long, device=dev))
            best = c_score.flatten(1).topk(k, dim=-1).indices                 # next frontier, among the k^2
            frontier = offset + best
            parent_of_best = best // k                                        # which fed node
            feat_in = out.gather(1, cfg_rows(parent_of_best, self.opts)[..., None].expand(-1, -1, out.shape[-1]))
            fed_anc = fed_anc.gather(1, parent_of_best[..., None].expand(-1, -1, fed_anc.shape[-1]))
        pool_tok, pool_score = torch.cat(pool_tok, 1), torch.cat(pool_score, 1)
        pool_parent, pool_depth = torch.cat(pool_parent, 1), torch.cat(pool_depth, 1)
        # the M - 1 best candidates; a stable sort keeps a parent (lower pool index) before an equal child
        order = torch.sort(pool_score, dim=1, descending=True, stable=True).indices[:, :M - 1]
        chosen = order.sort(dim=1).values                                     # pool order: parents first
        parent_pool = pool_parent.gather(1, chosen) - 1                        # -1: the root
        parent = torch.searchsorted(chosen, parent_pool.clamp(min=0)) + 1
        parent = torch.where(parent_pool < 0, torch.zeros_like(parent), parent)
        tokens = torch.cat([root[:, None], pool_tok.gather(1, chosen)], 1)
        parent = torch.cat([torch.full((B, 1), -1, dtype=torch.long, device=dev), parent], 1)
        depth_of = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=dev), pool_depth.gather(1, chosen)], 1)
        anc = torch.eye(M, dtype=torch.bool, device=dev)[None].repeat(B, 1, 1)
        up = parent
        for _ in range(depth + 1):  # climb one generation at a time (the tree is at most depth + 1 deep)
            b_i, n_i = (up >= 0).nonzero(as_tuple=True)
            anc[b_i, n_i, up[b_i, n_i]] = True
            up = torch.where(up >= 0, parent.gather(1, up.clamp(min=0)), up)
        # children in node order (= the drafter's order among siblings)
        is_child = parent[:, :, None] == torch.arange(M, device=dev)[None, None]     # [B, child, parent]
        rank = is_child.long().cumsum(1) - 1                                          # sibling rank
        children = torch.full((B, M, k), -1, dtype=torch.long, device=dev)
        b_idx, c_idx, p_idx = is_child.nonzero(as_tuple=True)
        children[b_idx, p_idx, rank[b_idx, c_idx, p_idx]] = c_idx
        return DraftTree(tokens, parent, depth_of, anc, children)

    # -- verification -------------------------------------------------------------------------------
    def _accept(self, probs: torch.Tensor, tree: DraftTree, limit: torch.Tensor, u: torch.Tensor | None):
        """probs [B, M, V] (the target's distribution after each node) -> the accepted path [B, D+2] of node
        indices (-1 padded), accepted draft counts [B] and the next token [B]."""
        B, M, V = probs.shape
        k = self.width
        dev = probs.device
        rows = torch.arange(B, device=dev)
        cur = torch.zeros(B, dtype=torch.long, device=dev)
        accepted = torch.zeros(B, dtype=torch.long, device=dev)
        searching = torch.ones(B, dtype=torch.bool, device=dev)
        levels = self.levels
        path = torch.full((B, levels + 1), -1, dtype=torch.long, device=dev)
        path[:, 0] = 0
        p = probs[:, 0].clone()
        at_once = self.opts.greedy or (self.rule.exact and not self.static)
        for level in range(1, levels + 1):
            child = tree.children[rows, cur]                                   # [B, k] in the drafter's order
            valid = searching[:, None] & (child >= 0) & (level <= limit)[:, None]
            if not bool(valid.any()):
                break
            x = tree.tokens.gather(1, child.clamp(min=0))
            uk = None if u is None else u[:, (level - 1) * k:level * k]      # fixed columns: rows never share draws
            if at_once:
                ok, p = self._siblings_at_once(p, x, valid, uk)
            elif self.static:
                ok, p = self._siblings_drawn(p, x, valid, uk, tree.q_draw.gather(1, child.clamp(min=0)),
                                             tree.q[rows, cur])
            else:
                ok, p = self._siblings_in_turn(p, x, valid, uk)
            moved = ok.any(1)
            first = ok.long().argmax(1)
            cur = torch.where(moved, child[rows, first], cur)
            path[:, level] = torch.where(moved, cur, path[:, level])
            accepted += moved.long()
            if not self.opts.greedy:  # rows that stay: what is left of p after their rejections
                mass = p.sum(-1, keepdim=True)
                # all mass removed (only after relaxed rejections): fall back to the target, as the chain engine does
                p = torch.where(mass > 0, p / mass.clamp_min(1e-30), probs[rows, cur])
            p = torch.where(moved[:, None], probs[rows, cur], p)
            searching &= moved
            if not bool(searching.any()):
                break
        if self.opts.greedy:
            nxt = probs[rows, cur].argmax(-1)
        else:
            cdf = p.double().cumsum(-1)
            nxt = torch.searchsorted(cdf, (u[:, -1:].double() * cdf[:, -1:]), right=True)[:, 0].clamp(max=V - 1)
            nxt = torch.where(p.gather(-1, nxt[:, None])[:, 0] > 0, nxt, p.argmax(-1))  # a rounded-up draw
        return path, accepted, nxt

    def _siblings_at_once(self, p: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, u: torch.Tensor | None):
        """All siblings x [B, k] of a node in one go -> (accepted [B, k], the first True wins; p afterwards,
        unnormalised). Greedy: x_j is kept when it is the argmax of p with p(x_j) raised to p~(x_j) (p is
        never changed). Exact sampling: after rejecting x_1..x_{j-1}, p(x_j) has become
        p(x_j) / (1 - p(x_1) - ... - p(x_{j-1})), so x_j is kept when u_j <= that; p afterwards is p with the
        rejected siblings zeroed."""
        B, k = x.shape
        if self.opts.greedy:
            ptilde, _ = self.rule.relaxed_prob(p[:, None].expand(-1, k, -1), x)
            boosted = p[:, None].expand(-1, k, -1).scatter(-1, x[..., None], ptilde[..., None])
            return (boosted.argmax(-1) == x) & valid, p
        px = torch.where(valid, p.gather(-1, x), torch.zeros_like(x, dtype=p.dtype))
        left = 1.0 - (px.cumsum(1) - px)                                       # mass before trying x_j
        ok = valid & (left > 0) & (u <= px / left.clamp_min(1e-30))
        tried = valid & (ok.long().cumsum(1) == 0)                             # rejected before any acceptance
        return ok, p.scatter(-1, x, torch.where(tried, torch.zeros_like(px), p.gather(-1, x)))

    def _siblings_in_turn(self, p: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, u: torch.Tensor):
        """LANTERN's sampling rule, one sibling after the other: x_j is kept when u_j <= p~(x_j); a rejected x_j
        zeroes p(x_j) (and, when it borrowed its neighbours' mass, their first k+1) before the next sibling."""
        B, k = x.shape
        ok = torch.zeros_like(valid)
        for j in range(k):
            live = valid[:, j] & ~ok.any(1)
            if not bool(live.any()):
                break
            ptilde, relaxed = self.rule.relaxed_prob(p[:, None], x[:, j:j + 1])
            ok[:, j] = live & (u[:, j] <= ptilde[:, 0])
            rejected = live & ~ok[:, j]
            if bool(rejected.any()):
                certain = torch.zeros_like(p).scatter_(-1, x[:, j:j + 1], 1.0)
                rest = self.rule.residual(p, certain, x[:, j], relaxed[:, 0])
                mass = rest.sum(-1, keepdim=True)
                rest = torch.where(mass > 0, rest / mass.clamp_min(1e-30), torch.zeros_like(rest))
                p = torch.where(rejected[:, None], rest, p)
        return ok, p

    def _siblings_drawn(self, p: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, u: torch.Tensor,
                        q_draw: torch.Tensor, q: torch.Tensor):
        """Siblings drawn without replacement from the drafter's q (LANTERN++'s static tree), one after the
        other: x_j, drawn from q_j (q without x_1..x_{j-1}, renormalised) with probability q_draw_j, is kept
        when u_j <= p~(x_j) / q_draw_j; a rejection leaves norm(max(0, p - q_j)), with LANTERN's neighbours
        of a relaxed x_j zeroed in q_j (the release's evaluate_posterior_v1). A draw of probability 0 (fewer
        tokens than children left after filtering) is skipped."""
        B, k = x.shape
        ok = torch.zeros_like(valid)
        q_j = q.clone()
        for j in range(k):
            live = valid[:, j] & ~ok.any(1) & (q_draw[:, j] > 0)
            if bool(live.any()):
                ptilde, relaxed = self.rule.relaxed_prob(p[:, None], x[:, j:j + 1])
                ok[:, j] = live & (u[:, j] * q_draw[:, j] <= ptilde[:, 0])
                rejected = live & ~ok[:, j]
                if bool(rejected.any()):
                    drawn_from = q_j / q_j.sum(-1, keepdim=True).clamp_min(1e-30)
                    rest = self.rule.residual(p, drawn_from, x[:, j], relaxed[:, 0])
                    mass = rest.sum(-1, keepdim=True)
                    rest = torch.where(mass > 0, rest / mass.clamp_min(1e-30), torch.zeros_like(rest))
                    p = torch.where(rejected[:, None], rest, p)
            q_j = q_j.scatter(-1, x[:, j:j + 1], 0.0)  # the next sibling was drawn without this one
        return ok, p

    def _grow_static(self, root_out: torch.Tensor, n: torch.Tensor, root: torch.Tensor,
                     gumbel_u: torch.Tensor | None) -> DraftTree:
        """LANTERN++'s static tree: level by level, every node's children are its drafter distribution's
        draws without replacement (Gumbel top-c with the row's uniforms; the top c when greedy)."""
        st, lay, B, dev = self.shape, self.layout, len(n), root_out.device
        M, V, H = st.tokens, self.target.vocab_size, root_out.shape[-1]
        tokens = torch.zeros(B, M, dtype=torch.long, device=dev)
        tokens[:, 0] = root
        q = torch.zeros(B, M, V, device=dev)
        q_draw = torch.ones(B, M, device=dev)
        node_out = root_out.new_zeros(root_out.shape[0], M, H)
        node_out[:, 0] = root_out
        q[:, 0] = self._draft_logp(root_out, n).exp()
        base = int(self.last.max()) + 1
        ctx_mask = torch.arange(base, device=dev)[None, :] <= self.last[:, None]     # [B, base]
        for level, (drawing, kids, col, rank) in enumerate(lay.levels, start=1):
            # the children of the previous level's nodes
            qp = q[:, drawing]                                                # [B, P, V]
            keys = qp.clamp_min(1e-30).log()
            if gumbel_u is not None:
                lo = self.parents.index(drawing[0]) * V
                uu = gumbel_u[:, lo:lo + len(drawing) * V].view(B, len(drawing), V).clamp(1e-20, 1 - 1e-7)
                keys = keys - torch.log(-torch.log(uu))
            keys = torch.where(qp > 0, keys, torch.full_like(keys, float("-inf")))
            top = keys.topk(self.width, dim=-1).indices                        # [B, P, width] in draw order
            q_top = qp.gather(-1, top)
            q_seq = q_top / (1 - (q_top.cumsum(-1) - q_top)).clamp_min(1e-30)  # q_j(x_j): without the earlier draws
            tokens[:, kids] = top[:, col, rank]
            q_draw[:, kids] = q_seq[:, col, rank]
            if level == self.levels:
                break
            # feed this level: (the parent's output, the node's token) in the node's slot, seeing its ancestors
            feed = torch.tensor(kids, device=dev)
            slots = (base + feed - 1)[None].expand(B, -1)
            seen = lay.ancestors[feed][:, 1:kids[-1] + 1][None].expand(B, -1, -1)  # fed slots so far
            mask = torch.cat([ctx_mask[:, None].expand(-1, len(kids), -1), seen], 2)[:, None]
            rope = (self.last[:, None] + level).expand(-1, len(kids))
            out = self._head(node_out[:, lay.parent[feed]], cfg_rows(tokens[:, feed], self.opts), cfg_rows(rope, self.opts),
                             cfg_rows(slots, self.opts), cfg_rows(mask, self.opts))
            node_out[:, feed] = out
            q[:, feed] = self._draft_logp(out, (n + level)[:, None].expand(-1, len(kids))).exp()
        return DraftTree(tokens, lay.parent[None].expand(B, -1), lay.depth[None].expand(B, -1),
                         lay.ancestors[None].expand(B, -1, -1), lay.children[None].expand(B, -1, -1), q, q_draw)

    # -- the loop -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, cond, generators: list[torch.Generator]):
        opts, target, head = self.opts, self.target, self.head
        B, N, cls = len(cond), target.block_size, target.cls_token_num
        M, levels = self.shape.tokens, self.levels
        if len(generators) != B:
            raise ArgenError(f"{B} conditions but {len(generators)} generators")
        dev = target.output.weight.device
        dtype = target.output.weight.dtype
        R = B * (2 if opts.cfg > 1.0 else 1)
        cache = lg.KVCache(target.config, R, cls + N + M + 1, dtype, dev)
        self.draft_cache = head.new_cache(R, cls + N + self.fed + levels + 2, dtype, dev)
        self.drafter_calls, target_calls = 0, 0
        rows_cond, cond_mask = target.condition_rows(cond, with_null=opts.cfg > 1.0)
        logits, h = target(None, rows_cond, torch.arange(cls, device=dev), cache=cache, cond_mask=cond_mask,
                           features=True)
        F_.count("target", target.forward_flops(R, cls, cls, prefill=True))
        target_calls += 1
        seq = torch.zeros(B, N + levels + 1, dtype=torch.long, device=dev)
        probs0 = logits_to_probs(guided_logits(logits[:, -1], opts, 0), opts)
        seq[:, 0] = lg.pick(probs0, opts, generators)
        n = torch.ones(B, dtype=torch.long, device=dev)                  # committed tokens per row
        # the drafter's context: (h_s, token of base position s + 1) for s < cls; t2i's caption positions
        # carry token id 0, the last condition position the first image token
        self.last = torch.full((B,), -1, dtype=torch.long, device=dev)   # last drafter index in the cache
        first_tokens = torch.zeros(B, cls, dtype=torch.long, device=dev)
        first_tokens[:, -1] = seq[:, 0]
        root_out = self._context(h, cfg_rows(first_tokens, opts), torch.full((B,), cls, device=dev))
        out_seq = torch.zeros(B, N, dtype=torch.long, device=dev)
        alive = torch.arange(B, device=dev)                               # original row of each batch row
        gens = list(generators)
        steps = drafts_kept = 0
        target_forwards = torch.ones(B)
        draft_seconds = verify_seconds = 0.0
        tries = levels * self.width + 1
        gumbel = len(self.parents) * target.vocab_size if self.static and not opts.greedy else 0
        while len(alive):
            b = len(alive)
            rows = torch.arange(b, device=dev)
            t0 = time.perf_counter()
            u = None if opts.greedy else torch.stack(  # a fixed block per row and step: rows never share draws
                [torch.rand(tries + gumbel, generator=g, device=g.device) for g in gens]).to(dev)
            if self.static:
                tree = self._grow_static(root_out, n, seq[rows, n - 1], None if u is None else u[:, tries:])
            else:
                tree = self._grow(root_out, n, seq[rows, n - 1])
            t1 = time.perf_counter()
            # verification: every node in its own slot after the longest context, at the position of its depth
            base = cls + int(n.max()) - 1
            slots = base + torch.arange(M, device=dev)                           # shared by the rows: one copy
            rope = cls + n[:, None] - 1 + tree.depth
            kv_len = base + M
            ctx = torch.arange(base, device=dev)[None, :] < (cls + n[:, None] - 1)          # [b, base]
            mask = torch.cat([ctx[:, None].expand(-1, M, -1), tree.ancestors], 2)[:, None]
            logits, feats = target(cfg_rows(tree.tokens, opts), None, slots, cache=cache, rope_pos=cfg_rows(rope, opts),
                                   attn_mask=cfg_rows(mask, opts), features=True)
            F_.count("target", target.forward_flops(cache.k[0].shape[0], M, kv_len))
            target_calls += 1
            index = n[:, None] - 1 + tree.depth                                  # image index of each node
            probs = logits_to_probs(guided_logits(logits, opts, index + 1), opts)   # [b, M, V]
            path, a, nxt = self._accept(probs, tree, N - n - 1, None if u is None else u[:, :tries])
            t2 = time.perf_counter()
            # commit: the accepted drafts, then the next token; entry j is also the token after path node j
            j = torch.arange(levels + 1, device=dev)[None]
            drafts = tree.tokens.gather(1, path.clamp(min=0))[:, 1:]
            after = torch.where(j < a[:, None], torch.cat([drafts, nxt[:, None]], 1), nxt[:, None])
            pos = torch.where(j <= a[:, None], n[:, None] + j, torch.full_like(j, N + levels))
            seq.scatter_(1, pos, after)
            # the accepted path's keys and values into the row's next slots
            src = torch.where(path >= 0, base + path, base)                      # [b, levels + 1]
            dst = torch.where(path >= 0, cls + n[:, None] - 1 + j, base + M)     # unused entries: a junk slot
            cache.move(cfg_rows(src, opts), cfg_rows(dst, opts))
            # the drafter's new pairs: (feature of path node j, token after it) for j = 0..a
            feats_path = feats.gather(1, cfg_rows(path.clamp(min=0), opts)[..., None].expand(-1, -1, feats.shape[-1]))
            root_out = self._context(feats_path, cfg_rows(after, opts), a + 1)
            n = n + a + 1
            steps += b
            drafts_kept += int(a.sum())
            target_forwards[alive.cpu()] += 1
            draft_seconds += t1 - t0 + (time.perf_counter() - t2)
            verify_seconds += t2 - t1
            done = n >= N
            if bool(done.any()):
                out_seq[alive[done]] = seq[done, :N]
                keep = (~done).nonzero()[:, 0]
                both = torch.cat([keep, keep + b]) if opts.cfg > 1.0 else keep   # the CFG halves' rows
                alive, n, seq, root_out = alive[keep], n[keep], seq[keep], root_out[both]
                self.last = self.last[keep]
                gens = [gens[i] for i in keep.tolist()]
                _keep_rows(cache, both)
                _keep_rows(self.draft_cache, both)
        counters = {
            "accepted_length": (drafts_kept + steps) / max(steps, 1),
            "tree_nodes": float(M),
            "target_forwards_per_image": float(target_forwards.mean()),
            "target_forward_calls": float(target_calls),
            "drafter_forward_calls": float(self.drafter_calls),
            # the context pass at the start, then per step one context pass and `depth` expansions
            "drafter_forwards_per_image": float(1 + (target_forwards.mean() - 1) * (self.expansions + 1)),
            "draft_seconds": draft_seconds, "verify_seconds": verify_seconds,
        }
        return out_seq, counters


def _keep_rows(cache: lg.KVCache, rows: torch.Tensor) -> None:
    """Drop finished rows from a KV cache (their samples are complete)."""
    cache.k = [k.index_select(0, rows) for k in cache.k]
    cache.v = [v.index_select(0, rows) for v in cache.v]
    if cache.key_valid is not None:
        cache.key_valid = cache.key_valid.index_select(0, rows)
