"""``lmforge chat``: an interactive REPL on a run's tuned model or on any model reference."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lmforge.models import load_for_inference, resolve_target

__all__ = ["chat_loop", "resolve_target"]  # resolve_target lives in models (export uses it too)

HELP = "Commands: /reset clears the conversation, /system TEXT sets a system prompt, /exit quits."


def chat_loop(
    target: str,
    read: Callable[[str], str] = input,
    write: Callable[[str], Any] = print,
    on_token: Callable[[str], Any] | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: str | None = None,
) -> None:
    """Read user turns, stream the model's replies, keep the conversation until /reset or /exit.

    ``on_token`` receives the reply piece by piece as it is generated; without it, each whole
    reply is passed to ``write`` as ``bot> ...``.
    """
    from transformers import TextIteratorStreamer

    model_dir, adapter_dir, description = resolve_target(target)
    model, tokenizer = load_for_inference(model_dir, adapter_dir)
    write(f"Chatting with {description}. {HELP}")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = []
            write("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line.removeprefix("/system").strip() or None
            history = []
            write(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        worker = threading.Thread(
            target=model.generate,
            kwargs={
                **encoded,
                "max_new_tokens": max_new_tokens,
                "streamer": streamer,
                "pad_token_id": tokenizer.pad_token_id,
                **sampling,
            },
        )
        # generate() runs under no_grad in its own thread; this one only drains the streamer.
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            if on_token is not None:
                on_token(piece)
        worker.join()
        reply = "".join(pieces).strip()
        if on_token is None:
            write(f"bot> {reply}")
        history.append({"role": "assistant", "content": reply})
