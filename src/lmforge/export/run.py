"""``lmforge export``: merge, save a standard HF folder, write GGUF files and an Ollama Modelfile, then prove parity.

setup (find the model and adapter) -> merge (fp32, whatever precision the run trained in) ->
save (``hf/``, ``<name>.<type>.gguf``, ``Modelfile``) -> parity checks (``parity.json``). A failing
check fails the export: the files stay for inspection, the manifest says ``failed`` (with the
error) and the command exits non-zero.

Output, by default ``runs/<run>/export/``::

    hf/                      merged safetensors, tokenizer, chat template, generation_config.json (EOS = end of turn)
    <name>.f16.gguf          GGUF files, one per requested type, chat template and EOS in the metadata
    <name>.q8_0.gguf
    Modelfile                for `ollama create <name> -f Modelfile`
    parity.json              every check with its measurements
    manifest.json
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, Problem, StageError
from lmforge.export import llamacpp
from lmforge.export.card import model_card
from lmforge.export.gguf_file import GGUF_TYPES, SUPPORTED_ARCHITECTURES, write_gguf
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_text, final_model, fingerprint_data, is_run_dir

DEFAULT_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Who may appeal a decision?"},
    ],
    [{"role": "user", "content": "Explain what a pension is."}],
]


@dataclass
class ExportSettings:
    """What to export and how strictly to check it."""

    out_dir: Path | None = None
    """Output folder (default: ``<run>/export``; required when exporting a model reference)."""
    gguf_types: list[str] = field(default_factory=lambda: ["f16", "q8_0"])
    name: str | None = None
    """Model name in the GGUF metadata and the file names (default: the run's name)."""
    samples: int = 4
    """Sample conversations for the parity checks (from the run's test split when it has one)."""
    new_tokens: int = 24
    """Tokens generated per sample by the parity checks."""
    min_agreement: float = 0.9
    """Least share of next tokens a GGUF must predict like the merged full-precision model."""
    parity: bool = True


@dataclass
class ExportResult:
    out_dir: Path
    hf_dir: Path
    gguf_files: dict[str, Path]
    modelfile: Path | None
    checks: list[dict[str, Any]]


def run_export(target: str, settings: ExportSettings, adapter: str | None = None) -> ExportResult:
    """Export a run (``runs/NAME``) or a model reference (with an optional LoRA ``adapter`` folder).

    Raises:
        StageError: a parity check failed (the files and ``parity.json`` are kept).
    """
    from lmforge.models import resolve_target

    bad = [t for t in settings.gguf_types if t not in GGUF_TYPES]
    if bad:
        raise ConfigError("lmforge export", [Problem("--gguf", f"got {bad}; expected some of {list(GGUF_TYPES)}")])
    model_dir, adapter_dir, _ = resolve_target(target)
    if adapter is not None:
        adapter_dir = Path(adapter)
    is_run = is_run_dir(target)
    if settings.out_dir is None and not is_run:
        raise ConfigError("lmforge export", [Problem("--out", "required when exporting a model reference")])
    out_dir = Path(settings.out_dir or Path(target) / "export")
    name = settings.name or (Path(target).resolve().name if is_run else Path(model_dir).name)
    stage = StageDir(root=out_dir, stage="export")
    config = {"target": str(target), "adapter": str(adapter_dir) if adapter_dir else None, "name": name}
    config.update(gguf_types=settings.gguf_types, min_agreement=settings.min_agreement, new_tokens=settings.new_tokens)
    final = final_model(target) if is_run else None
    inputs = {"model": str(model_dir), "trained": {final.stage: final.fingerprint} if final else None}
    stage.start(fingerprint_data([config, inputs]), config, inputs)

    print(f"export: merging {adapter_dir or '(no adapter)'} into {model_dir} in fp32")
    merged, unmerged, tokenizer = merge(model_dir, adapter_dir)
    hf_dir = save_hf_folder(merged, tokenizer, out_dir / "hf")
    print(f"export: HF folder {hf_dir}")
    gguf_files: dict[str, Path] = {}
    for out_type in settings.gguf_types:
        path = out_dir / f"{name}.{out_type}.gguf"
        info = gguf_file(hf_dir, path, out_type, name)
        gguf_files[out_type] = path
        print(f"export: {path} ({info['bytes'] / 1e6:.1f} MB, {info['writer']}, tensors {info['tensors_by_type']})")
    modelfile = None
    if gguf_files:
        chosen = gguf_files.get("q8_0") or next(iter(gguf_files.values()))
        modelfile = out_dir / "Modelfile"
        atomic_write_text(modelfile, ollama_modelfile(chosen.name, tokenizer))

    card = model_card(str(target), name, Path(model_dir), final, gguf_files)
    for folder in (out_dir, hf_dir):  # next to the GGUF files, and in the HF folder a hub upload takes
        atomic_write_text(folder / "README.md", card)
    print(f"export: model card {out_dir / 'README.md'}")

    checks: list[dict[str, Any]] = []
    if settings.parity:
        conversations = sample_conversations(target if is_run else None, settings.samples)
        checks = _parity_checks(settings, conversations, merged, unmerged, tokenizer, hf_dir, gguf_files, out_dir)
        failed = [c for c in checks if c["passed"] is False]
        if failed:
            lines = [f"{c['name']}: {'; '.join(c.get('problems', [])) or c}" for c in failed]
            error = StageError(
                "export parity checks failed (files kept for inspection in "
                f"{out_dir}, details in parity.json):\n  " + "\n  ".join(lines)
            )
            stage.fail(error)
            raise error
    outputs = {"hf": str(hf_dir), "gguf": {k: str(v) for k, v in gguf_files.items()}}
    if modelfile:
        outputs["modelfile"] = str(modelfile)
    stage.finish({"checks": checks}, outputs=outputs)
    return ExportResult(out_dir, hf_dir, gguf_files, modelfile, checks)


def merge(model_dir: Path, adapter_dir: Path | None) -> tuple[Any, Any, Any]:
    """(merged model, base + adapter unmerged or None, tokenizer), all fp32 in eval mode.

    The base is always loaded in fp32, so an adapter trained on a bf16 or quantized base is merged
    into full-precision weights.
    """
    import torch

    from lmforge.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(adapter_dir or model_dir)
    if adapter_dir is None:
        return load_causal_lm(model_dir, dtype=torch.float32).eval(), None, tokenizer
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(load_causal_lm(model_dir, dtype=torch.float32), str(adapter_dir)).eval()
    merged = PeftModel.from_pretrained(load_causal_lm(model_dir, dtype=torch.float32), str(adapter_dir))
    return merged.merge_and_unload().eval(), unmerged, tokenizer


def save_hf_folder(model: Any, tokenizer: Any, target: Path) -> Path:
    """Save safetensors, tokenizer and chat template; generation_config stops at the end-of-turn token."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise StageError("the tokenizer has no EOS token; an exported model would never stop")
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.config.eos_token_id = eos
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def sample_conversations(run: str | None, count: int) -> list[list[dict[str, str]]]:
    """Prompts for the parity checks: the run's test questions (without answers), else generic ones."""
    from lmforge.records import read_records
    from lmforge.rundir import StageDir as _StageDir

    conversations: list[list[dict[str, str]]] = []
    if run is not None:
        splits = _StageDir.open(run, "data").manifest.get("outputs", {}).get("splits", {})
        path = splits.get("test") or splits.get("train")
        if path and Path(path).is_file():
            for record in read_records(path):
                if record["kind"] == "chat":
                    turns = record["messages"]
                    last_user = max(i for i, m in enumerate(turns) if m["role"] != "assistant")
                    conversations.append([dict(m) for m in turns[: last_user + 1]])
                if len(conversations) >= count:
                    break
    return conversations or DEFAULT_CONVERSATIONS[:count]


def ollama_modelfile(gguf_name: str, tokenizer: Any) -> str:
    """An Ollama Modelfile: the GGUF, the ChatML template (if ChatML), the default system prompt, the stop token."""
    lines = [f"FROM ./{gguf_name}", ""]
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
        ]
        default_system = _default_system_prompt(tokenizer)
        if default_system:
            lines.append(f'SYSTEM """{default_system}"""')
    else:
        lines.append("# The chat template is read from the GGUF metadata (tokenizer.chat_template).")
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    return "\n".join(lines) + "\n"


def _default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt a ChatML template inserts when a conversation has none (SmolLM2 does), else None."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not rendered.startswith(head):
        return None
    return rendered[len(head) : rendered.index("<|im_end|>")]


def _parity_checks(
    settings: ExportSettings,
    conversations: list[Any],
    merged: Any,
    unmerged: Any,
    tokenizer: Any,
    hf_dir: Path,
    gguf_files: dict[str, Path],
    out_dir: Path,
) -> list[dict[str, Any]]:
    """Every parity check, printed and written to ``parity.json`` (a check that could not run: ``passed`` null)."""
    from lmforge.export import parity

    samples = parity.reference_samples(merged, tokenizer, conversations, settings.new_tokens)
    results = []
    if unmerged is not None:
        results.append(parity.check_merge(merged, unmerged, samples))
    results.append(parity.check_hf_folder(hf_dir, merged, samples))
    for out_type, path in gguf_files.items():
        check, _ = parity.check_gguf(path, out_type, merged, tokenizer, samples, settings.min_agreement)
        results.append(check)
        if parity.llama_cpp_available():
            results.append(parity.check_llama_cpp(path, out_type, samples, settings.min_agreement))
    if not parity.llama_cpp_available():
        print("export: llama-cpp-python is not installed; the llama.cpp parity check was skipped")
    checks = [r.as_dict() for r in results]
    atomic_write_json(out_dir / "parity.json", {"samples": samples.prompts, "checks": checks})
    for result in results:
        mark = "✔" if result.passed else "✘" if result.ran else "-"
        shown = {k: v for k, v in result.details.items() if k != "problems"}
        print(f"export: {mark} {result.name} {shown}")
    return checks


def gguf_file(hf_dir: Path, path: Path, out_type: str, name: str) -> dict[str, Any]:
    """Write one GGUF file with llama.cpp's converter (:mod:`lmforge.export.llamacpp`); where it is not fetched, or
    does not know a tokenizer trained from scratch, lmforge's own writer covers Llama and Mistral. Returns the
    file's size, writer and tensor types.

    Raises:
        StageError: neither can convert this architecture (the message says how to fetch the converter).
    """
    import json

    architecture = (json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"])[0]
    own = architecture in SUPPORTED_ARCHITECTURES
    if llamacpp.available():
        try:
            llamacpp.convert(hf_dir, path, out_type, name)
            return {"bytes": path.stat().st_size, "writer": f"llama.cpp {llamacpp.VERSION}", **_tensor_types(path)}
        except llamacpp.UnknownTokenizer as exc:
            if not own:
                raise
            print(f"export: {exc}; lmforge's own writer maps {architecture} with its tokenizer as it is")
    elif not own:
        raise StageError(
            f"GGUF of {architecture} needs llama.cpp's converter (lmforge's own writer maps "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}): `python -m lmforge.export.llamacpp` fetches it, "
            "pip install 'lmforge[export]' its dependencies"
        )
    info = write_gguf(hf_dir, path, out_type, name)
    return {"bytes": info["bytes"], "writer": "lmforge", "tensors_by_type": info["tensors_by_type"]}


def _tensor_types(path: Path) -> dict[str, Any]:
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        kind = tensor.tensor_type.name.lower()
        counts[kind] = counts.get(kind, 0) + 1
    return {"tensors_by_type": counts}
