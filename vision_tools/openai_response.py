"""Trajectories -> OpenAI chat completions and stream chunks (plus the ``trajectory`` extension).

A choice's ``message.content`` is the answer (or, without one, the last turn's text, cut before
a caller's stop string); ``finish_reason`` is ``stop`` (an answer or a stop string), ``length``
(turn or token limits) or ``tool_calls`` (client-side tools: the model called one). Each choice
also carries ``trajectory``: every turn, tool call, violation and tool-result image.

Streaming sends, per choice, each committed turn as a chunk whose ``delta.reasoning_content``
holds the turn's text and whose ``turn`` holds its record; then the answer as ``delta.content``
(and ``delta.tool_calls``), a chunk with ``finish_reason``, the usage chunk if asked, and ``[DONE]``.

Every choice carries OpenAI's required ``logprobs`` (null unless asked) and ``message.refusal``
(null). With ``logprobs: true``, ``choices[].logprobs.content`` lists every token the model
generated in the choice, turn after turn (``{"token", "logprob", "bytes", "top_logprobs": []}``;
the logprob under the model's own distribution, as the trainer computes it): the answer in
``content`` is taken out of these turns, not a token sequence of its own. Streamed, each turn's
chunk carries its tokens' entries.
"""

from __future__ import annotations

import json
import time
import uuid

from vision_tools.engine import Trajectory, TurnRecord
from vision_tools.openai_schema import ChatRequest
from vision_tools.request_images import data_url


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet (byte -> the character a token string uses for it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


class TokenText:
    """Token ids as OpenAI's log-prob entries: each token's text and UTF-8 bytes (a byte-level BPE
    token may hold part of a character: its bytes are exact, its text shows U+FFFD; an id the
    tokenizer has no token for, which a model's padded vocabulary allows, has text "" and bytes
    null)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        self.special = set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.seen: dict[int, tuple[str, list[int]]] = {}

    def _piece(self, i: int) -> tuple[str, list[int] | None]:
        if i not in self.seen:
            piece = self.tok.convert_ids_to_tokens(i)
            if piece is None:  # an id of the model's vocabulary the tokenizer has no token for
                self.seen[i] = ("", None)
                return self.seen[i]
            if i in self.special or not all(ch in self.byte_of for ch in piece):
                raw = piece.encode("utf-8")
            else:
                raw = bytes(self.byte_of[ch] for ch in piece)
            self.seen[i] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.seen[i]

    def entries(self, ids: list[int], logprobs: list[float]) -> list[dict]:
        out = []
        for i, lp in zip(ids, logprobs):
            text, raw = self._piece(int(i))
            out.append({"token": text, "logprob": float(lp), "bytes": raw, "top_logprobs": []})
        return out

    def turn(self, t: Trajectory, r: TurnRecord) -> list[dict]:
        """The entries of one committed turn's generated tokens."""
        return self.entries(t.input_ids[r.span[0] : r.span[1]].tolist(), r.logprobs or [])


def choice_logprobs(t: Trajectory, req: ChatRequest, tokens: TokenText | None) -> dict | None:
    """``choices[].logprobs``: None unless asked; else every generated token's entry, in order."""
    if not req.logprobs or tokens is None:
        return None
    return {"content": [e for r in t.turns for e in tokens.turn(t, r)], "refusal": None}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:16]}"


def turn_json(r: TurnRecord, image=None, ids: list[int] | None = None) -> dict:
    """One turn's record; ``image`` (the tool result, PIL) is added as a data URL when given, and
    ``ids`` (its generated token ids, with ``logprobs: true``) as ``token_ids`` with ``logprobs``."""
    call = getattr(r.parsed, "call", None)
    out = {
        "text": r.text,
        "kind": r.parsed.kind if r.parsed.ok else "violation",
        "tool_call": {"name": call.name, "arguments": call.arguments} if call else None,
        "violation": None if r.parsed.ok else {"code": r.parsed.code, "message": r.parsed.message},
        "image_index": r.image_index,
        "error": r.error,
        "attempts": r.attempts,
        "tokens": r.span[1] - r.span[0],
        "seconds": round(r.seconds, 4),
    }
    if image is not None:
        out["image"] = data_url(image)
    if ids is not None:  # what an RL client scores: the ids as generated, and their log-probs
        out["token_ids"], out["logprobs"] = list(ids), r.logprobs
    return out


def trajectory_json(t: Trajectory, include_images: bool = True, token_ids: bool = False) -> dict:
    ids = [t.input_ids[r.span[0] : r.span[1]].tolist() if token_ids else None for r in t.turns]
    out = {
        "finish_reason": t.finish_reason,
        "answer": t.answer,
        "turns": [turn_json(r, ids=i) for r, i in zip(t.turns, ids)],
        "violations": t.violations,
        "prompt_tokens": t.prompt_length,
        "generated_tokens": t.generated_tokens,
        "total_tokens": int(t.input_ids.numel()),
    }
    if include_images:
        results = [r.image_index for r in t.turns if r.image_index is not None]  # not the request's own
        out["images"] = [
            {
                "index": k,
                "width": t.images[k].width,
                "height": t.images[k].height,
                "url": data_url(t.images[k]),
            }
            for k in results
        ]
    return out


def message(t: Trajectory, req: ChatRequest, stop: list[str]) -> tuple[dict, str]:
    """(the choice's message, its finish_reason)."""
    last = t.turns[-1] if t.turns else None
    call = getattr(last.parsed, "call", None) if last is not None and last.parsed.ok else None
    if req.client_tools and call is not None:
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        content = last.text.split("<tool_call>")[0].strip() or None
        calls = [{"id": call_id, "type": "function",
                  "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]  # fmt: skip
        return {"role": "assistant", "content": content, "refusal": None, "tool_calls": calls}, "tool_calls"
    text = t.answer if t.answer is not None else (last.text if last else "")
    if t.finish_reason == "stop":
        text = min((text.split(s)[0] for s in stop if s in text), key=len, default=text)
    # with client tools the server takes one turn per request: only a turn cut short is "length"
    cut = last is not None and last.span[1] - last.span[0] >= req.engine.max_turn_tokens
    one_turn = req.client_tools and t.finish_reason == "max_turns" and not cut
    finish = "stop" if t.finish_reason in ("answer", "stop") or one_turn else "length"
    return {"role": "assistant", "content": text, "refusal": None}, finish


def usage(trajs: list[Trajectory]) -> dict:
    prompt = trajs[0].prompt_length
    completion = sum(t.generated_tokens for t in trajs)
    rest = sum(int(t.input_ids.numel()) - t.prompt_length - t.generated_tokens for t in trajs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + rest,
    }


def completion(
    trajs: list[Trajectory],
    req: ChatRequest,
    model: str,
    cid: str | None = None,
    tokens: TokenText | None = None,
) -> dict:
    """The ``chat.completion`` object; ``tokens`` renders log-probs (with ``logprobs: true``)."""
    choices = []
    for i, t in enumerate(trajs):
        msg, finish = message(t, req, list(req.engine.stop))
        traj = trajectory_json(t, req.include_images, token_ids=req.logprobs)
        lps = choice_logprobs(t, req, tokens)
        choices.append(
            {"index": i, "message": msg, "logprobs": lps, "finish_reason": finish, "trajectory": traj}
        )
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(trajs),
    }


class ChunkWriter:
    """Server-sent events of one streamed completion, in OpenAI's ``chat.completion.chunk`` form."""

    def __init__(self, req: ChatRequest, model: str, tokens: TokenText | None = None):
        self.req, self.model, self.id, self.created = req, model, completion_id(), int(time.time())
        self.started: set[int] = set()
        self.tokens = tokens if req.logprobs else None

    def event(self, choices: list[dict], **extra) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(self, index: int, delta: dict, finish: str | None = None, logprobs=None, **extra) -> str:
        if index not in self.started:  # the first delta of a choice names the role
            self.started.add(index)
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self.event([choice], **extra)

    def turn(
        self, index: int, record: dict, ids: list[int] | None = None, logprobs: list[float] | None = None
    ) -> str:
        """A committed turn's chunk; its generated ``ids`` and their ``logprobs`` as the chunk's
        log-prob entries when the request asked for them."""
        lps = None
        if self.tokens is not None and ids is not None:
            lps = {"content": self.tokens.entries(ids, logprobs or []), "refusal": None}
        return self.delta(index, {"reasoning_content": record["text"]}, logprobs=lps, turn=record)

    def finish(self, trajs: list[Trajectory]) -> str:
        out = []
        for i, t in enumerate(trajs):
            msg, finish = message(t, self.req, list(self.req.engine.stop))
            delta = {"content": msg["content"]}
            if "tool_calls" in msg:
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(msg["tool_calls"])]
            out.append(self.delta(i, delta))
            traj = trajectory_json(t, self.req.include_images, token_ids=self.req.logprobs)
            out.append(self.delta(i, {}, finish, trajectory=traj))
        if self.req.include_usage:
            out.append(self.event([], usage=usage(trajs)))
        return "".join(out) + "data: [DONE]\n\n"

    def error(self, e) -> str:
        return f"data: {json.dumps(e.body())}\n\n"
