"""A generator that prefills each distinct context once and keeps a conversation's KV cache
between turns.

:class:`HFGenerator` hands ``model.generate`` every row in full: G copies of a GRPO prompt
(and their images) are prefilled G times, and every tool turn re-prefills the whole
conversation. :class:`CachedGenerator` runs its own decode loop over the model's forward with
a KV cache whose buffers have room for the turn (a step writes in place, no copy of the cache):

* rows whose contexts are equal (ids and pixels) and have no cache yet are prefilled once and
  the cache is expanded to their rows before the first token is chosen;
* a context that carries a ``session`` (a dict the engine keeps per conversation) reuses the
  keys and values stored there for the longest common prefix of its ids, and only the rest
  (the closing of the last turn, the tool result with its image, the next header) is run;
* with ``prefixes=N`` (a server, whose weights do not change), the keys and values of the first
  turn (the system prompt) of the last N distinct prompts are kept, and a new conversation starts
  from the longest of them its ids begin with: requests that share a system prompt (the tool
  prompt is ~900 tokens) prefill it once. Only text before the first image is shared (equal ids
  of two images need not be equal pixels); off by default, as a trainer's weights change
  between rollouts. (In bf16 a kept prefix computed in another batch need not be bit-identical
  to a fresh prefill, so seeded samples can depend on what the server ran before.)

Batch layout of one prefill forward (U distinct units, P = longest reused past, S = longest
new part; both left-padded, the padding masked out; positions are mm's M-RoPE positions of the
whole context, so they do not depend on the layout)::

    cache keys/values  [U, heads, P, head_dim]   [pad | past_u]
    input_ids          [U, S]                    [pad | new_u]
    attention_mask     [U, P + S]

then rows index the units, and each decode step appends one token per unfinished row
(finished rows leave the batch). A session stores ``ids`` (the tokens whose keys and values it
holds) and ``kv`` (per layer ``(keys, values)``, each ``[1, heads, len(ids), head_dim]``).

Greedy ids equal :class:`HFGenerator`'s (tested in fp32, also over several turns); sampling
uses the same logits processors (suppressed control tokens, temperature, top-k, top-p).
ZeRO-3 over several ranks (``synced_gpus``) takes :class:`HFGenerator`'s path. Per-request
stop strings (``Sampling.stop``) and the ``cancelled`` hook work as in :class:`HFGenerator`: a
cancelled row leaves the batch at the next token. ``generate(..., steps=k)`` may end a call
midway through the rows' turns, which later calls resume (a server's rounds of tokens).
Rows whose ``Sampling.logprobs`` is set come back as ``TurnIds`` carrying each token's log-prob,
the log-softmax of the step's raw logits at the chosen id (a resumed turn's earlier log-probs,
``Context.resumed_logprobs``, come first); other rows cost nothing extra.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

from mm.rope import TEXT
from vision_tools.generation.base import (
    STOP_STRINGS,
    Context,
    Sampling,
    TurnIds,
    context_positions,
    sampled_logprobs,
    turn_over,
)
from vision_tools.generation.hf import HFGenerator


def _grow(x: torch.Tensor, n: int, capacity: int) -> torch.Tensor:
    """``x``'s first ``n`` positions (dim 2) in a new buffer of ``capacity`` positions."""
    out = x.new_empty(*x.shape[:2], capacity, x.shape[-1])
    out[:, :, :n] = x[:, :, :n]
    return out


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with ``room`` spare positions: a
    decoding step writes its token in place instead of copying the whole cache (``torch.cat``
    every step, for every layer, grows with rows x context). ``keys`` / ``values`` are views of
    the filled part, as every user of the cache reads them."""

    is_croppable = False

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.n, self.is_initialized = key_states.device, 0, True
        self._k = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[-1])
        self._v = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[-1])

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.n, key_states.shape[-2]
        if n + m > self._k.shape[2]:
            capacity = max(n + m + self.room, 2 * self._k.shape[2])
            self._k, self._v = _grow(self._k, n, capacity), _grow(self._v, n, capacity)
        self._k[:, :, n : n + m], self._v[:, :, n : n + m] = key_states, value_states
        self.n = n + m
        self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("CachedGenerator's cache supports update and batch_select_indices only")

    crop = batch_repeat_interleave = reorder_cache = offload = prefetch = _unsupported


class _Unit:
    """One distinct prefill: the reused past, the new part of the context, and its visuals."""

    def __init__(self, c: Context, reuse: int, kv, spec):
        types = torch.tensor(c.types)
        pos, self.next_position = context_positions(c, types, spec)
        self.ids, self.types, self.pos = c.input_ids[reuse:], types[reuse:], pos[:, reuse:]  # [3, S_u]
        self.past = [(k[..., :reuse, :], v[..., :reuse, :]) for k, v in kv] if reuse else None
        self.reuse = reuse
        # visuals whose placeholders lie in the new part (a reused prefix ends on a text token)
        first_image = _blocks(types[:reuse], 1)
        first_video = _blocks(types[:reuse], 2)
        self.pixels, self.grids = c.pixel_values[first_image:], c.grids[first_image:]
        self.videos = c.videos[first_video:]


def _blocks(types: torch.Tensor, kind: int) -> int:
    """How many vision blocks of ``kind`` start in ``types`` ([L])."""
    hit = types == kind
    return int(hit[:1].sum() + (hit[1:] & ~hit[:-1]).sum())


def _same(a: Context, b: Context) -> bool:
    return (
        a.input_ids == b.input_ids
        and len(a.pixel_values) == len(b.pixel_values)
        and all(torch.equal(x, y) for x, y in zip(a.pixel_values, b.pixel_values))
        and len(a.videos) == len(b.videos)
        and all(torch.equal(x[0], y[0]) for x, y in zip(a.videos, b.videos))
    )


MIN_PREFIX = 32  # shorter shared parts are not worth an entry


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two id sequences."""
    if len(a) <= len(b) and b[: len(a)] == a:  # a session or kept prefix goes on: at C speed
        return len(a)
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _text_prefix(c: Context) -> int:
    """Tokens before the first image or video of ``c`` (all of it if text-only)."""
    return next((j for j, t in enumerate(c.types) if t != TEXT), len(c.types))


def _reusable(c: Context) -> int:
    """Tokens of ``c`` whose keys and values its session holds: the common prefix, less at least
    one token (the forward needs an input), backed off to a text token."""
    s = c.session
    if not s or "ids" not in s:
        return 0
    n = min(_common(s["ids"], c.input_ids), len(c.input_ids) - 1)
    while n > 0 and c.types[n - 1] != TEXT:  # never split a vision block
        n -= 1
    return n


def _resumed_logprobs(c: Context) -> list[float]:
    """The log-probs a resumed turn's list starts with (a copy: the turn goes on from them)."""
    if c.resumed and (c.resumed_logprobs is None or len(c.resumed_logprobs) != c.resumed):
        raise ValueError(
            f"a resumed turn of {c.resumed} tokens needs their {c.resumed} log-probs "
            "(Context.resumed_logprobs) to hand back the log-probs of the whole turn"
        )
    return list(c.resumed_logprobs or []) if c.resumed else []


class CachedGenerator(HFGenerator):
    """Own decode loop: one prefill per distinct context, KV cache kept across turns."""

    in_place = True  # decoding writes into preallocated cache buffers (False: torch.cat per step)
    supports_logprobs = True  # each chosen token's log-prob is taken from the step's logits

    def __init__(self, model, processor, *, synced_gpus: bool = False, features=None, prefixes: int = 0):
        super().__init__(model, processor, synced_gpus=synced_gpus, features=features)
        self.max_prefixes = prefixes
        self.prefixes: OrderedDict[tuple[int, ...], list] = OrderedDict()  # text ids -> kv, newest last
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        kinds = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise ValueError(
                f"CachedGenerator keeps full-attention caches; this model has layers {sorted(kinds)}: "
                "use rollout generator 'hf'"
            )
        self._suppressed = None  # [V] bool: the suppressed ids (built at the first step)
        # decoding steps hand SDPA its ready mask (see _step_mask)
        self._ready_mask = model.config.get_text_config()._attn_implementation == "sdpa"
        self._warpers = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    @property
    def resumable(self) -> bool:
        """Turns may be cut after ``steps`` tokens and resumed (not when synced: see generate)."""
        return not self.synced_gpus

    @torch.no_grad()
    def generate(
        self,
        contexts: list[Context],
        max_new_tokens: list[int],
        sampling: Sampling | list[Sampling],
        steps: int | None = None,
    ) -> list[list[int]]:
        """As :meth:`HFGenerator.generate`; with ``steps``, the call ends after that many tokens
        per row (or, with a ``pause`` hook, at the first later step it says so), and a row whose
        turn did not end comes back unfinished (its keys and values kept in its session).
        Handing the context back with those tokens appended and ``Context.resumed`` counting them
        goes on with the turn: ``max_new_tokens``, stop strings and the returned ids then cover
        the whole turn (greedy: the ids of one uncut call).
        ``sampling`` may be one per row (a server's rows at different attempts, greedy or sampled)."""
        if self.synced_gpus:  # every rank must run the same forwards: generate's synced loop
            if steps is not None or any(c.resumed for c in contexts) or isinstance(sampling, list):
                raise ValueError("synced generation runs whole turns with one Sampling and no steps")
            return super().generate(contexts, max_new_tokens, sampling)
        if not contexts:
            return []
        units: list[_Unit] = []
        row_unit: list[int] = []
        fresh: list[tuple[int, Context]] = []  # (unit, context) of units prefilled from scratch
        for c in contexts:  # equal fresh contexts (GRPO's G copies) share one prefill
            reuse = _reusable(c)
            shared = next((u for u, f in fresh if _same(f, c)), None) if reuse == 0 else None
            if shared is None:
                shared = len(units)
                if reuse:
                    units.append(_Unit(c, reuse, c.session["kv"], self.rope))
                else:
                    units.append(_Unit(c, *self._prefix(c), self.rope))
                    fresh.append((shared, c))
            row_unit.append(shared)
        cache, logits, mask = self._prefill(units, max(max_new_tokens))  # logits [U, V], mask [U, P + S]
        for u, c in fresh:
            self._keep_prefix(c, units[u], cache, mask, u)
        rows = torch.tensor(row_unit, device=self.model.device)
        if len(units) < len(contexts):  # the G rows of a group start from one prefill
            cache.batch_select_indices(rows)
        nxt = torch.tensor([units[u].next_position for u in row_unit], device=rows.device)  # [B]
        per_row = sampling if isinstance(sampling, list) else [sampling] * len(contexts)
        return self._decode(contexts, cache, logits[rows], mask[rows], nxt, max_new_tokens, per_row, steps)

    def _shared_part(self, c: Context) -> int:
        """Tokens of ``c`` other prompts may share: its first turn (the system prompt) up to and
        with its ``<|im_end|>``, never past the first image, and at least one token short of all."""
        n = min(_text_prefix(c), len(c.input_ids) - 1)
        return next((j + 1 for j, t in enumerate(c.input_ids[:n]) if t == self.end_ids[0]), n)

    def _prefix(self, c: Context) -> tuple[int, list | None]:
        """(tokens, kv) of the longest kept prefix that ``c`` starts with (0, None: none)."""
        part = tuple(c.input_ids[: self._shared_part(c)])  # the kept prefixes' keys are tuples
        best, kv = 0, None
        for ids, entry in self.prefixes.items():
            n = _common(ids, part)
            if n > best:
                best, kv, key = n, entry, ids
        if kv is not None:
            self.prefixes.move_to_end(key)
        return best, kv

    def _keep_prefix(self, c: Context, unit: _Unit, cache, mask, row: int) -> None:
        """Keep the keys and values of ``c``'s shared part (unit ``row`` of the prefill ``cache``,
        whose real positions ``mask`` marks) unless a kept one covers it; the oldest beyond
        ``max_prefixes`` go."""
        n = self._shared_part(c)
        if self.max_prefixes == 0 or n < MIN_PREFIX or unit.reuse >= n:
            return
        key = tuple(c.input_ids[:n])
        where = torch.nonzero(mask[row]).flatten()[:n]  # the row's first n tokens (past, then new)
        self.prefixes[key] = [
            (layer.keys[row : row + 1, :, where], layer.values[row : row + 1, :, where])
            for layer in cache.layers
        ]  # advanced indexing copies: later writes to the cache buffers do not reach them
        while len(self.prefixes) > self.max_prefixes:
            self.prefixes.popitem(last=False)

    def _prefill(self, units: list[_Unit], new_tokens: int):
        U, S = len(units), max(len(u.ids) for u in units)
        P = max(u.reuse for u in units)
        ids = torch.full((U, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros(U, P + S, dtype=torch.long)
        types = torch.zeros(U, S, dtype=torch.long)
        pos = torch.zeros(3, U, S, dtype=torch.long)  # [3, U, S]; padding keeps 0 (masked)
        for i, u in enumerate(units):
            n = len(u.ids)
            ids[i, S - n :], types[i, S - n :], pos[:, i, S - n :] = torch.tensor(u.ids), u.types, u.pos
            mask[i, P - u.reuse : P] = 1
            mask[i, P + S - n :] = 1
        # buffers with room for the prefill and every decoding step (in_place off: transformers'
        # DynamicLayer, which concatenates: the baseline of benchmarks/decode_cache.py)
        grows = partial(_GrowingLayer, (S if P else 0) + new_tokens) if self.in_place else DynamicLayer
        cache = Cache(layer_class_to_replicate=grows)
        if P:  # the reused pasts, left-padded to P: [U, heads, P, head_dim] per layer
            ref = next(u.past for u in units if u.past)
            layers = []
            for layer, (k0, v0) in enumerate(ref):
                k = k0.new_zeros(U, k0.shape[1], P, k0.shape[-1])
                v = v0.new_zeros(U, v0.shape[1], P, v0.shape[-1])
                for i, u in enumerate(units):
                    if u.reuse:
                        k[i, :, P - u.reuse :], v[i, :, P - u.reuse :] = (
                            u.past[layer][0][0],
                            u.past[layer][1][0],
                        )
                layers.append(grows())
                layers[-1].update(k, v)
            cache = Cache(layers=layers)
        batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types, "position_ids": pos}
        batch = self._with_visuals(
            batch,
            [v for u in units for v in u.videos],
            [p for u in units for p in u.pixels],
            [g for u in units for g in u.grids],
        )
        out = self.model(**batch, cache=cache, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits[:, -1].float(), batch["attention_mask"]

    def _choose(self, logits: torch.Tensor, kinds: list[Sampling], kind_of: list[int]) -> torch.Tensor:
        """The next token of each row (``logits`` [B, V]) under its sampling ``kinds[kind_of[row]]``."""
        if len(kinds) == 1:
            return self._choose_one(logits, kinds[0])
        out = torch.empty(len(kind_of), dtype=torch.long, device=logits.device)
        for k, kind in enumerate(kinds):
            rows = torch.tensor([j for j, x in enumerate(kind_of) if x == k], device=logits.device)
            if len(rows):
                out[rows] = self._choose_one(logits[rows], kind)
        return out

    def _choose_one(self, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        ids = torch.empty(logits.shape[0], 0, dtype=torch.long, device=logits.device)  # unused by these
        V = logits.shape[-1]
        if self._suppressed is None or len(self._suppressed) != V or self._suppressed.device != logits.device:
            self._suppressed = torch.zeros(V, dtype=torch.bool, device=logits.device)
            self._suppressed[[i for i in self.suppress if i < V]] = True
        scores = logits.masked_fill(self._suppressed, -float("inf"))  # as SuppressTokensLogitsProcessor
        if not sampling.do_sample:
            return scores.argmax(-1)
        temperature, top_k, top_p = self._warpers
        if sampling.temperature != 1.0:
            scores = temperature(sampling.temperature)(ids, scores)
        if sampling.top_k:
            scores = top_k(sampling.top_k)(ids, scores)
        if sampling.top_p < 1.0:
            scores = top_p(sampling.top_p)(ids, scores)
        return torch.multinomial(torch.softmax(scores, -1), 1)[:, 0]

    def _decode(self, contexts, cache, logits, mask, nxt, limits, samplings, steps) -> list[list[int]]:
        dev = self.model.device
        B = len(contexts)
        stops = [STOP_STRINGS + tuple(s.stop) for s in samplings]
        kinds = [s for j, s in enumerate(samplings) if s not in samplings[:j]]  # distinct, once
        kind_of = [kinds.index(s) for s in samplings]
        cancelled = self.cancelled or (lambda key: False)
        # a resumed turn's tokens so far start its list: limits and stop strings see the whole turn
        new: list[list[int]] = [c.input_ids[len(c.input_ids) - c.resumed :] for c in contexts]
        # and their log-probs start its log-probs (rows that asked for them: Sampling.logprobs)
        lps = [_resumed_logprobs(c) if s.logprobs else None for c, s in zip(contexts, samplings)]
        scored = any(lp is not None for lp in lps)
        active = list(range(B))  # rows still in the batch, in cache order
        # which cached positions each row attends to, with room for every step (a step only
        # moves the end ``n``); handed to the model as its ready mask (see _step_mask)
        n = mask.shape[1]
        attend = torch.ones(B, n + max(limits), dtype=torch.bool, device=dev)
        attend[:, :n] = mask.bool()
        padded = not bool(attend[:, :n].all())
        step = 0
        while True:
            chosen = self._choose(logits, kinds, [kind_of[i] for i in active])
            tokens = chosen.tolist()
            step_lps = sampled_logprobs(logits, chosen).tolist() if scored else None
            keep = []
            for k, (i, t) in enumerate(zip(active, tokens)):
                new[i].append(t)
                if lps[i] is not None:
                    lps[i].append(step_lps[k])
                if cancelled(contexts[i].key):  # nothing of it is kept
                    continue
                if not turn_over(self.tok, new[i], limits[i], stops[i], self.end_ids, samplings[i].cut_loops):
                    keep.append(k)
                else:
                    self._store(contexts[i], new[i], cache, attend[:, :n], k, fed=step)
            paused = (
                steps is not None
                and step + 1 >= steps
                and (self.pause is None or self.pause(B - len(keep), B))
            )
            if keep and paused:  # the rest go on in a later call
                for k in keep:
                    self._store(contexts[active[k]], new[active[k]], cache, attend[:, :n], k, fed=step)
                keep = []
            if not keep:
                turns = [self._trim(t, limit, stop) for t, limit, stop in zip(new, limits, stops)]
                return [TurnIds.of(t, lp[: len(t)] if lp is not None else None) for t, lp in zip(turns, lps)]
            if len(keep) < len(active):  # finished rows leave the batch
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                attend, nxt = attend[sel], nxt[sel]
                padded = padded and not bool(attend[:, :n].all())
                active = [active[k] for k in keep]
            ids = torch.tensor([[new[i][-1]] for i in active], device=dev)  # [B', 1]
            pos = (nxt + step)[None, :, None].expand(3, -1, 1)  # [3, B', 1]
            n += 1
            out = self.model(
                input_ids=ids,
                attention_mask=self._step_mask(attend[:, :n], padded),
                position_ids=pos,
                cache=cache,
                use_cache=True,
            )
            cache, logits, step = out.cache, out.logits[:, -1].float(), step + 1

    def _step_mask(self, attend: torch.Tensor, padded: bool):
        """The attention mask of a one-token step over ``attend`` ([B, n] bool). With SDPA, the
        model's own mask in its form (``{"full_attention": [B, 1, 1, n]}``, True: attended; None
        without padding), which the model takes as is: building it from the 2-D mask at every
        step (transformers' ``create_causal_mask``) cost as much as the attention itself at 16
        long rows on a CPU. Other attention implementations get the 2-D mask."""
        if not self._ready_mask:
            return attend
        return {"full_attention": attend[:, None, None, :] if padded else None}

    def _store(self, c: Context, new: list[int], cache, mask, row: int, fed: int) -> None:
        """Keep row ``row``'s keys and values (its context and the ``fed`` tokens of this call
        that went through the model) in the conversation's session."""
        if c.session is None:
            return
        new = new[c.resumed :]  # a resumed turn's earlier tokens are in the context already
        where = torch.nonzero(mask[row]).flatten()  # the row's real positions: past, prefill, fed
        kv = [
            (layer.keys[row : row + 1, :, where], layer.values[row : row + 1, :, where])
            for layer in cache.layers
        ]
        c.session.update(ids=list(c.input_ids) + new[:fed], kv=kv)
