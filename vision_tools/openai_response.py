"""Trajectories -> OpenAI chat completions and stream chunks (plus the ``trajectory`` extension).

A choice's ``message.content`` is the answer (or, without one, the last turn's text, cut before
a caller's stop string); ``finish_reason`` is ``stop`` (an answer or a stop string), ``length``
(turn or token limits) or ``tool_calls`` (client-side tools: the model called one). Each choice
also carries ``trajectory``: every turn, tool call, violation and tool-result image.

Streaming sends, per choice, each committed turn as a chunk whose ``delta.reasoning_content``
holds the turn's text and whose ``turn`` holds its record; then the answer as ``delta.content``
(and ``delta.tool_calls``), a chunk with ``finish_reason``, the usage chunk if asked, and ``[DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid

from vision_tools.engine import Trajectory, TurnRecord
from vision_tools.openai_schema import ChatRequest
from vision_tools.request_images import data_url


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:16]}"


def turn_json(r: TurnRecord, image=None) -> dict:
    """One turn's record; ``image`` (the tool result, PIL) is added as a data URL when given."""
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
    return out


def trajectory_json(t: Trajectory, include_images: bool = True) -> dict:
    out = {
        "finish_reason": t.finish_reason,
        "answer": t.answer,
        "turns": [turn_json(r) for r in t.turns],
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
        return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
    text = t.answer if t.answer is not None else (last.text if last else "")
    if t.finish_reason == "stop":
        text = min((text.split(s)[0] for s in stop if s in text), key=len, default=text)
    # with client tools the server takes one turn per request: only a turn cut short is "length"
    cut = last is not None and last.span[1] - last.span[0] >= req.engine.max_turn_tokens
    one_turn = req.client_tools and t.finish_reason == "max_turns" and not cut
    finish = "stop" if t.finish_reason in ("answer", "stop") or one_turn else "length"
    return {"role": "assistant", "content": text}, finish


def usage(trajs: list[Trajectory]) -> dict:
    prompt = trajs[0].prompt_length
    completion = sum(t.generated_tokens for t in trajs)
    rest = sum(int(t.input_ids.numel()) - t.prompt_length - t.generated_tokens for t in trajs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + rest,
    }


def completion(trajs: list[Trajectory], req: ChatRequest, model: str, cid: str | None = None) -> dict:
    choices = []
    for i, t in enumerate(trajs):
        msg, finish = message(t, req, list(req.engine.stop))
        traj = trajectory_json(t, req.include_images)
        choices.append({"index": i, "message": msg, "finish_reason": finish, "trajectory": traj})
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

    def __init__(self, req: ChatRequest, model: str):
        self.req, self.model, self.id, self.created = req, model, completion_id(), int(time.time())
        self.started: set[int] = set()

    def event(self, choices: list[dict], **extra) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(self, index: int, delta: dict, finish: str | None = None, **extra) -> str:
        if index not in self.started:  # the first delta of a choice names the role
            self.started.add(index)
            delta = {"role": "assistant", **delta}
        return self.event([{"index": index, "delta": delta, "finish_reason": finish}], **extra)

    def turn(self, index: int, record: dict) -> str:
        return self.delta(index, {"reasoning_content": record["text"]}, turn=record)

    def finish(self, trajs: list[Trajectory]) -> str:
        out = []
        for i, t in enumerate(trajs):
            msg, finish = message(t, self.req, list(self.req.engine.stop))
            delta = {"content": msg["content"]}
            if "tool_calls" in msg:
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(msg["tool_calls"])]
            out.append(self.delta(i, delta))
            out.append(self.delta(i, {}, finish, trajectory=trajectory_json(t, self.req.include_images)))
        if self.req.include_usage:
            out.append(self.event([], usage=usage(trajs)))
        return "".join(out) + "data: [DONE]\n\n"

    def error(self, e) -> str:
        return f"data: {json.dumps({'error': {'code': e.code, 'message': e.message}})}\n\n"
