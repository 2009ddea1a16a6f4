"""The multi-turn tool engine: generate a turn -> parse -> run the tool -> insert the image -> go on.

Many conversations run at once. Each round, every unfinished conversation generates its next
assistant turn (batched; a turn stops at ``</tool_call>``, ``</answer>``, the end-of-turn token
or its token limit). The turn is parsed with :func:`vision_tools.protocol.parse_turn`; a tool
call runs, and its image comes back as the next **user** turn (``Image k: W x H. ...``, the
question repeated after ``scale_image``). A violating turn (bad format, repetition, failing
call) is resampled up to ``max_resamples`` times; if it still fails, the model reads the error
as the next user turn. Nothing a model writes can raise out of the engine.

Token-in, token-out: a conversation's ids are the prompt's ids, then exactly the ids the model
generated, then the inserted turns tokenised once by the same tokenizer (their images expanded
to the planned number of ``<|image_pad|>`` tokens). ``Trajectory.generated`` marks the model's
own tokens; ``Trajectory.encoded()`` hands the trainer these ids unchanged. The same final
conversation (``Trajectory.messages``) rendered by the processor gives the same ids (tested).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from mm.chat_template import ASSISTANT_HEADER, END_OF_TEXT, IM_END, IMAGE_PAD, IMAGE_PLACEHOLDER, turn
from mm.config import ConfigError, opt
from mm.encode import IGNORE, ConversationEncoder, EncodedSample
from mm.models import family_of_processor
from mm.records import Message, is_visual, parse_message
from mm.rope import IMAGE, TEXT, RopeSpec, mrope_positions
from mm.visual import VisualConfig, load_visuals
from vision_tools.generation import (
    DEFAULT,
    GENERATORS,
    STOP_STRINGS,
    Context,
    Generator,
    Sampling,
    make_generator,
    turn_over,
)
from vision_tools.protocol import Turn, Violation, error_text, parse_turn, result_text
from vision_tools.tools import Tool, ToolContext, ToolError, as_toolset, display_size


@dataclass
class EngineConfig:
    max_turns: int = opt(16, "assistant turns per conversation")
    max_turn_tokens: int = opt(1024, "new tokens per assistant turn")
    max_total_tokens: int = opt(16384, "tokens per conversation: prompt, turns and tool results")
    do_sample: bool = opt(False, "sample (True) or greedy (False)")
    temperature: float = opt(1.0, "sampling temperature (also used by resampling)")
    top_p: float = opt(0.95, "nucleus sampling (also used by resampling)")
    top_k: int = opt(50, "top-k sampling (also used by resampling)")
    max_resamples: int = opt(4, "resample a violating turn up to N times (sampled); 0 for RL rollouts")
    coords: Literal["dynamic", "fixed"] = opt(
        "dynamic", "tool coordinates: absolute pixels of the image as shown, or a 0..999 grid"
    )
    snap_scale: bool = opt(
        True,
        "inference: any scale_factor in [0.25, 4] snaps to {0.25, 0.5, 1.5, 2, 2.5, 4}; off (RL): only "
        "0.25-0.5 / 1.5-4, used as given",
    )
    batch_size: int = opt(16, "conversations generated together")
    seed: int | None = opt(None, "torch seed at the start of a run (sampling reproducibility)")
    stop: list[str] = opt(
        factory=list, help="extra stop strings: a turn that writes one ends the conversation"
    )
    cut_loops: bool = opt(
        False,
        "end a turn as soon as it is caught in a repetition loop (a 'repetition' violation whatever it "
        "writes next) instead of at max_turn_tokens; cached generator; the server's default, off for "
        "training rollouts (the trained tokens stay the model's whole turn)",
    )
    logprobs: bool = opt(
        False,
        "keep each generated token's log-prob under the model's own distribution (log-softmax of the "
        "raw logits, as the trainer computes it) in TurnRecord.logprobs; the generator must "
        "supports_logprobs; off: rollouts compute nothing extra",
    )
    generator: str = opt(
        DEFAULT,
        "decoding backend (vision_tools.generation.GENERATORS): cached: one prefill per distinct "
        "prompt, KV cache kept across turns (memory: the caches of the batch_size conversations "
        "running); hf: model.generate over every full context (the same greedy ids); vllm: vLLM "
        "(its own process and environment: mmpost vllm-setup; options under vllm)",
    )
    visual: VisualConfig = opt(factory=VisualConfig, help="pixel limits and the per-conversation budget")

    def __post_init__(self):
        if self.max_turns < 1 or self.max_turn_tokens < 1 or self.batch_size < 1 or self.max_resamples < 0:
            raise ValueError("max_turns, max_turn_tokens and batch_size must be >= 1, max_resamples >= 0")
        if self.generator not in GENERATORS:
            raise ConfigError(f"generator={self.generator!r}: use one of {', '.join(GENERATORS)}")


@dataclass
class TurnRecord:
    """One assistant turn as kept in the trajectory."""

    text: str
    span: tuple[int, int]  # where its generated ids sit in Trajectory.input_ids
    parsed: Turn | Violation
    attempts: int = 1  # 1 + resamples
    rejected: list[str] = field(default_factory=list)  # violation codes of discarded attempts
    image_index: int | None = None  # the tool result's index, if a tool ran
    error: str | None = None  # the text the model was shown instead of a result
    seconds: float = 0.0  # generation (shared by its batch) + tool time
    # with EngineConfig.logprobs: the log-prob of each of its generated ids (span) under the model's
    # own distribution, as the generator returned them for the committed attempt
    logprobs: list[float] | None = None


@dataclass
class Trajectory:
    """A finished conversation: exact ids, which of them the model generated, turns and images."""

    input_ids: torch.Tensor  # [L]
    generated: torch.Tensor  # [L] bool: True where the model produced the token
    mm_token_type_ids: torch.Tensor  # [L]
    pixel_values: torch.Tensor | None  # [patches, dim], every image in order
    image_grid_thw: torch.Tensor | None  # [n_images, 3]
    images: list[Image.Image]  # as the model saw them; index = order of appearance
    turns: list[TurnRecord]
    messages: list[dict]  # the final conversation in the one data format (PIL images)
    prompt_length: int
    finish_reason: Literal["answer", "max_turns", "max_tokens", "stop"]
    answer: str | None = None
    question: str | None = None  # the prompt's question (repeated after scale_image; for judges)

    @property
    def generated_tokens(self) -> int:
        return int(self.generated.sum())

    @property
    def violations(self) -> list[str]:
        return [t.parsed.code for t in self.turns if not t.parsed.ok]

    @property
    def logprobs(self) -> list[float] | None:
        """The log-prob of every generated token, in order (where ``generated`` is True), or None
        unless the engine kept them (``EngineConfig.logprobs``)."""
        if any(t.logprobs is None for t in self.turns):
            return None
        return [lp for t in self.turns for lp in t.logprobs]

    def encoded(self, rope: RopeSpec | None = None) -> EncodedSample:
        """The trajectory for the trainer: these ids, labels on generated tokens only."""
        labels = torch.where(self.generated, self.input_ids, torch.full_like(self.input_ids, IGNORE))
        pos, nxt = mrope_positions(self.mm_token_type_ids, self.image_grid_thw, spec=rope or RopeSpec())
        return EncodedSample(
            self.input_ids,
            labels,
            self.mm_token_type_ids,
            pos,
            pixel_values=self.pixel_values,
            image_grid_thw=self.image_grid_thw,
            next_position=nxt,
        )


def _copy_messages(messages: list[dict]) -> list[dict]:
    """New message dicts and content lists (the images themselves are shared, read-only)."""
    return [
        {**m, "content": [dict(it) for it in m["content"]]} if isinstance(m["content"], list) else dict(m)
        for m in messages
    ]


class _Conversation:
    """Mutable state of one running conversation."""

    def __init__(self, key: int, question: str | None):
        self.key, self.question = key, question
        self.ids: list[int] = []
        self.types: list[int] = []
        self.generated: list[bool] = []
        self.pixels: list[torch.Tensor] = []
        self.grids: list[torch.Tensor] = []
        self.images: list[Image.Image] = []
        self.messages: list[dict] = []
        self.turns: list[TurnRecord] = []
        self.visual_used = 0
        self.prompt_length = 0
        self.finish: str | None = None
        self.answer: str | None = None
        self.session: dict = {}  # the generator's cache state between turns
        # the current turn: its tokens so far (a turn generated in steps), resamples so far, the
        # violation codes of its discarded attempts, the seconds its attempts took
        self.partial: list[int] = []
        self.attempt = 0
        self.rejected: list[str] = []
        self.spent = 0.0

    def context(self) -> Context:
        ids, types = self.ids, self.types
        if self.partial:
            ids, types = ids + self.partial, types + [TEXT] * len(self.partial)
        return Context(
            ids,
            types,
            self.pixels,
            self.grids,
            self.key,
            session=self.session,
            resumed=len(self.partial),
            resumed_logprobs=getattr(self.partial, "logprobs", None),  # TurnIds of an unfinished turn
        )

    def extend(self, ids: list[int], types: list[int] | None = None, generated: bool = False) -> None:
        self.ids += ids
        self.types += types if types is not None else [TEXT] * len(ids)
        self.generated += [generated] * len(ids)


_QUESTION = re.compile(r"Question:\s*(.*?)(?:\n\n|$)", re.S)


class ToolEngine:
    """Runs conversations with tools. ``generator`` defaults to the one ``config.generator`` names."""

    def __init__(
        self,
        model,
        processor,
        tools=None,
        config: EngineConfig | None = None,
        generator: Generator | None = None,
    ):
        self.processor, self.tok = processor, processor.tokenizer
        self.cfg = config or EngineConfig()
        self.tools: dict[str, Tool] = as_toolset(tools)
        self.generator = generator or make_generator(self.cfg.generator, model, processor)
        if self.cfg.logprobs and not self.generator.supports_logprobs:
            raise ConfigError(
                f"logprobs: the {type(self.generator).__name__} generator does not return log-probs "
                "(Generator.supports_logprobs); use the cached or hf generator"
            )
        # no model (a scripted generator): the rule of the processor's family
        rope = (
            RopeSpec.from_config(model.config)
            if model is not None
            else RopeSpec.for_family(family_of_processor(processor))
        )
        self.encoder = ConversationEncoder(processor, self.cfg.visual, rope)
        ids = self.tok.convert_tokens_to_ids
        self.end_id, self.eot_id, self.image_id = (
            ids(IM_END),
            ids(END_OF_TEXT),
            ids(IMAGE_PAD),
        )
        self.header = self.tok(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
        self.merge = rope.spatial_merge_size**2

    # -- public ---------------------------------------------------------------------------

    def run(
        self, prompts: list[list[dict]], base_dir: str | None = None, questions: list[str] | None = None
    ) -> list[Trajectory]:
        """Run every prompt (messages in the one data format, ending with a user turn).

        ``questions`` (repeated after ``scale_image``) default to the ``Question: ...`` line of
        each prompt's last user turn. At most ``batch_size`` conversations run at once (a
        finished one's place goes to the next prompt), so the kept caches stay bounded however
        many prompts there are."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        convs = self.start(prompts, base_dir, questions)
        waiting, running = convs[::-1], []
        while self._agree(len(waiting) + len(running)):  # synced ranks go on while any has work
            while waiting and len(running) < self.cfg.batch_size:
                running.append(waiting.pop())
            self.step(running)  # one turn of each running conversation
            running = [c for c in running if c.finish is None]
        return [self.trajectory(c) for c in convs]

    # -- step-wise use (the HTTP server's continuous batching) ------------------------------

    def start(
        self,
        prompts: list[list[dict]],
        base_dir: str | None = None,
        questions: list[str | None] | None = None,
        keys: list[int] | None = None,
    ) -> list[_Conversation]:
        """Encode prompts into running conversations (``keys``: ids unique among those stepped
        together; default 0..n-1). Identical prompts share their encoding."""
        qs = questions or [None] * len(prompts)
        memo: dict = {}
        return [
            self._start(k, p, base_dir, q, memo) for k, p, q in zip(keys or range(len(prompts)), prompts, qs)
        ]

    def step(self, convs: list[_Conversation]) -> bool:
        """Commit the next turn of every unfinished conversation in ``convs``; False when none
        had one to take (conversations may come from several :meth:`start` calls)."""
        active = [c for c in convs if c.finish is None and self._room(c)]
        if not self._agree(len(active)):  # synced ranks run a round while any rank has work
            return False
        self._round(active)
        self._free(active)
        return True

    def advance(self, convs: list[_Conversation], steps: int) -> bool:
        """Decode ``steps`` tokens (more while the generator's ``pause`` hook says so) of every
        unfinished conversation in ``convs`` in one call, each greedy or sampled as its attempt
        wants; a conversation whose turn ended moves on at once (its tool runs, the turn is
        resampled or committed) and its next turn starts in the next call, without waiting for
        the other conversations' turns. A server calls this in a loop and lets new conversations
        join between calls. With a generator that is not ``resumable`` a call takes whole turns
        (:meth:`step`). Greedy conversations end as with :meth:`step`; False when none was active."""
        if not self.generator.resumable:
            return self.step(convs)
        active = [c for c in convs if c.finish is None and self._room(c)]
        if active:  # one call: each row greedy or sampled as its attempt wants
            t0 = time.perf_counter()
            news = self._generate(active, [self._sampling(c.attempt > 0) for c in active], steps)
            spent = time.perf_counter() - t0
            for c, new in zip(active, news):
                if self._ended(c, new):
                    self._settle(c, new, spent)
                else:
                    c.partial, c.spent = new, c.spent + spent
        self._free(active)
        return bool(active)

    @staticmethod
    def _free(convs: list[_Conversation]) -> None:
        for c in convs:  # a finished conversation's cache is not needed any more
            if c.finish is not None:
                c.session.clear()

    # -- conversation setup ---------------------------------------------------------------

    def _start(
        self, key: int, prompt: list[dict], base_dir: str | None, question: str | None, memo: dict
    ) -> _Conversation:
        msgs = [
            m if isinstance(m, Message) else parse_message(m, f"prompt {key} message {j}")
            for j, m in enumerate(prompt)
        ]
        if not msgs or msgs[-1].role != "user":
            raise ValueError(f"prompt {key}: must end with a user turn")
        try:  # G copies of one prompt (GRPO) load and encode their images once and share them
            ident = json.dumps([m.to_dict() if isinstance(m, Message) else m for m in prompt], sort_keys=True)
        except TypeError:  # images in memory
            ident = None
        encoded = memo.get(ident) if ident is not None else None
        if encoded is None:
            encoded = self._encode_prompt(key, msgs, base_dir)
            if ident is not None:
                memo[ident] = encoded
        messages, images, enc = encoded
        found = _QUESTION.search(msgs[-1].text())
        c = _Conversation(key, question or (found.group(1).strip() if found else None))
        c.extend(enc.input_ids.tolist(), enc.mm_token_type_ids.tolist())
        c.messages, c.images, c.prompt_length = _copy_messages(messages), list(images), len(c.ids)
        if images:
            sizes = (enc.image_grid_thw.prod(-1)).tolist()
            c.pixels = list(torch.split(enc.pixel_values, sizes))
            c.grids = list(enc.image_grid_thw)
            c.visual_used = sum(sizes) // self.merge
        return c

    def _encode_prompt(self, key: int, msgs: list[Message], base_dir: str | None):
        """(messages with the images as the model sees them, those images, the encoded prompt)."""
        plans = self.encoder.plan(msgs, base_dir)
        if any(p.kind == "video" for p in plans):
            raise ValueError(f"prompt {key}: the tool engine takes image prompts; videos are not supported")
        images, _ = load_visuals(plans, self.cfg.visual)
        shown = iter(images)
        messages = []
        for m in msgs:  # the images as the model sees them replace the references
            d = m.to_dict()
            if not isinstance(m.content, str):
                d["content"] = [
                    {"type": "image", "image": next(shown)} if is_visual(it) else dict(it) for it in m.content
                ]
            messages.append(d)
        return messages, images, self.encoder.encode(messages, add_generation_prompt=True)

    def _left(self, c: _Conversation) -> int:
        """New tokens a turn may still take (2 stay free for the ``<|im_end|>\n`` that closes it)."""
        return self.cfg.max_total_tokens - len(c.ids) - 2

    def _room(self, c: _Conversation) -> bool:
        if self._left(c) > 0:
            return True
        c.finish = "max_tokens"
        self._close_open_header(c)
        return False

    # -- one round: generate (with resampling), then commit ---------------------------------

    def _round(self, convs: list[_Conversation]) -> None:
        pending = list(convs)
        for attempt in range(self.cfg.max_resamples + 1):
            t0 = time.perf_counter()
            news = self._generate(pending, self._sampling(attempt > 0))
            spent = time.perf_counter() - t0
            pending = [c for c, new in zip(pending, news) if not self._settle(c, new, spent)]
            if not self._agree(len(pending)):
                break

    def _sampling(self, resampling: bool) -> Sampling:
        cfg = self.cfg
        return Sampling(
            cfg.do_sample or resampling,
            cfg.temperature,
            cfg.top_p,
            cfg.top_k,
            tuple(cfg.stop),
            cfg.cut_loops,
            cfg.logprobs,
        )

    def _limit(self, c: _Conversation) -> int:
        return min(self.cfg.max_turn_tokens, self.cfg.max_total_tokens - len(c.ids))

    def _generate(
        self, convs: list[_Conversation], sampling: Sampling | list[Sampling], steps: int | None = None
    ) -> list[list[int]]:
        """Each conversation's turn (so far, with ``steps``: see :meth:`advance`); ``sampling``
        one for all or (a resumable generator) one per conversation."""
        order = sorted(range(len(convs)), key=lambda i: len(convs[i].ids))  # similar lengths together
        out: list[list[int]] = [[] for _ in convs]
        bs = self.cfg.batch_size
        for k in range(0, self._agree(len(order)), bs):  # synced: as many calls as the busiest rank
            idx = order[k : k + bs]
            ctxs, limits = [convs[i].context() for i in idx], [self._limit(convs[i]) for i in idx]
            rows = [sampling[i] for i in idx] if isinstance(sampling, list) else sampling
            for i, new in zip(idx, self.generator.generate(ctxs, limits, rows, steps=steps)):
                out[i] = self._checked(new)
        return out

    def _checked(self, new: list[int]) -> list[int]:
        """A generated turn as returned, its log-probs checked when the engine asked for them."""
        lps = getattr(new, "logprobs", None)
        if not self.cfg.logprobs:
            return list(new)
        if lps is None or len(lps) != len(new):
            raise RuntimeError(
                f"{type(self.generator).__name__} returned {len(new)} ids with "
                f"{'no' if lps is None else len(lps)} log-probs (TurnIds.logprobs: one per id)"
            )
        return new

    def _ended(self, c: _Conversation, new: list[int]) -> bool:
        """Whether ``new`` (a turn so far) is over: an end token, a stop string, its token limit."""
        stops = STOP_STRINGS + tuple(self.cfg.stop)
        return turn_over(self.tok, new, self._limit(c), stops, (self.end_id, self.eot_id), self.cfg.cut_loops)

    def _settle(self, c: _Conversation, new: list[int], spent: float) -> bool:
        """Evaluate the ended attempt ``new`` of ``c``'s turn (``spent``: its generation
        seconds): commit it, or note a violation for another attempt while resamples are left.
        True when the turn was committed."""
        t0 = time.perf_counter()
        lps = getattr(new, "logprobs", None)
        if new and new[-1] == self.eot_id:  # <|endoftext|> ends the turn like <|im_end|> would,
            new = new[:-1]  # but the chat template has no place for it: the turn is closed for the model
            lps = lps[:-1] if lps is not None else None
        text, parsed, image = self._evaluate(c, new)
        c.partial, c.spent = [], c.spent + spent + time.perf_counter() - t0
        if not parsed.ok and c.attempt < self.cfg.max_resamples and not self.stopped(text):
            c.rejected.append(parsed.code)
            c.attempt += 1
            return False
        self._commit(c, new, text, parsed, image, c.attempt + 1, c.rejected, c.spent)
        c.turns[-1].logprobs = lps
        c.attempt, c.rejected, c.spent = 0, [], 0.0
        return True

    def _agree(self, n: int) -> int:
        """``n``, or its largest value over ranks when the generator is synced (ZeRO-3 on several
        ranks: every rank must make the same generate calls, with empty ones where it has none)."""
        return self.generator.agree(n)

    def _evaluate(self, c: _Conversation, new: list[int]):
        """(text, parsed turn or violation, tool result image or None); never raises."""
        body = new[:-1] if new and new[-1] == self.end_id else new
        text = self.tok.decode(body)
        # a result may use what is left of the visual budget and of the total tokens (less the
        # result turn's own text, ~48 tokens)
        room = min(
            self.cfg.visual.max_visual_tokens - c.visual_used, self.cfg.max_total_tokens - len(c.ids) - 64
        )
        ctx = ToolContext(
            images=c.images,
            coords=self.cfg.coords,
            min_pixels=self.cfg.visual.min_pixels,
            max_pixels=self.cfg.visual.max_pixels,
            max_visual_tokens=room,
            snap_scale=self.cfg.snap_scale,
            factor=self.encoder.family.factor,
        )
        parsed = None
        try:
            parsed = parse_turn(text, self.tools, ctx)
            if not parsed.ok or parsed.kind == "answer":
                return text, parsed, None
            return text, parsed, self.tools[parsed.call.name](ctx, parsed.call.arguments)
        except ToolError as e:
            return text, Violation(e.code, e.message, getattr(parsed, "call", None)), None
        except Exception as e:  # last line of defence: nothing a model writes may stop the engine
            return (
                text,
                Violation("tool_error", f"{type(e).__name__}: {e}", getattr(parsed, "call", None)),
                None,
            )

    def _commit(self, c, new, text, parsed, image, attempts, rejected, seconds) -> None:
        start = len(c.ids)
        c.extend(new, generated=True)
        rec = TurnRecord(text, (start, len(c.ids)), parsed, attempts, rejected, seconds=seconds)
        c.turns.append(rec)
        c.messages.append({"role": "assistant", "content": text})
        closed = bool(new) and new[-1] == self.end_id
        if self.stopped(text):  # the caller's stop string ends the conversation
            c.finish = "stop"
            c.extend(self._ids(("" if closed else IM_END) + "\n"))
            return
        if parsed.ok and parsed.kind == "answer":
            c.finish, c.answer = "answer", parsed.answer
            c.extend(self._ids(("" if closed else IM_END) + "\n"))
            return
        if len(c.turns) >= self.cfg.max_turns:
            c.finish = "max_turns"
            c.extend(self._ids(("" if closed else IM_END) + "\n"))
            return
        if image is not None:
            question = c.question if self.tools[parsed.call.name].repeat_question else None
            text = result_text(len(c.images), display_size(image.size, self.cfg.coords), question)
        else:
            text = error_text(parsed)
            rec.error = text
        self._insert_user_turn(c, image, text, closed)

    def _insert_user_turn(self, c, image, text, closed) -> None:
        """Append ``<|im_end|>`` (if the model did not), the user turn and the next header."""
        vision = IMAGE_PLACEHOLDER if image is not None else ""
        end = "" if closed else IM_END
        ids = self._ids(end + "\n" + turn("user", vision + text) + ASSISTANT_HEADER)
        types = [TEXT] * len(ids)
        content = [{"type": "text", "text": text}]
        if image is not None:
            r = self.processor.image_processor(images=[image], do_resize=False, return_tensors="pt")
            grid = r["image_grid_thw"][0]
            n = int(grid.prod()) // self.merge
            at = ids.index(self.image_id)
            ids = ids[:at] + [self.image_id] * n + ids[at + 1 :]
            types = types[:at] + [IMAGE] * n + types[at + 1 :]
        if len(c.ids) + len(ids) > self.cfg.max_total_tokens:  # no room for the result: stop here
            c.finish = "max_tokens"
            c.extend(self._ids(end + "\n"))
            return
        if image is not None:
            c.turns[-1].image_index = len(c.images)
            c.pixels.append(r["pixel_values"])
            c.grids.append(grid)
            c.images.append(image)
            c.visual_used += n
            content.insert(0, {"type": "image", "image": image})
        c.extend(ids, types)
        c.messages.append({"role": "user", "content": content})

    def _close_open_header(self, c: _Conversation) -> None:
        """A conversation that stops before the model's next turn drops the open assistant header."""
        n = len(self.header)
        if len(c.ids) > c.prompt_length and c.ids[-n:] == self.header:
            del c.ids[-n:], c.types[-n:], c.generated[-n:]

    def stopped(self, text: str) -> bool:
        """Whether ``text`` holds one of the caller's stop strings (``EngineConfig.stop``)."""
        return any(s in text for s in self.cfg.stop)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def trajectory(self, c: _Conversation) -> Trajectory:
        """A conversation's trajectory (final once ``c.finish`` is set)."""
        return Trajectory(
            input_ids=torch.tensor(c.ids, dtype=torch.long),
            generated=torch.tensor(c.generated, dtype=torch.bool),
            mm_token_type_ids=torch.tensor(c.types, dtype=torch.long),
            pixel_values=torch.cat(c.pixels) if c.pixels else None,
            image_grid_thw=torch.stack(c.grids) if c.grids else None,
            images=c.images,
            turns=c.turns,
            messages=c.messages,
            prompt_length=c.prompt_length,
            finish_reason=c.finish,
            answer=c.answer,
            question=c.question,
        )
