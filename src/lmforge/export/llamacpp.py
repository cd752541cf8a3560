"""llama.cpp's own GGUF converter (``convert_hf_to_gguf.py``), pinned, and the vocabulary files it ships.

llama.cpp's converter knows about a hundred model families, where lmforge's own GGUF writer
(:mod:`lmforge.export.gguf_file`) maps one. lmforge takes it from the PyPI source distribution of
``llama-cpp-python`` (which vendors llama.cpp), checked against a pinned SHA-256, and keeps three parts of it
under ``$LMFORGE_HOME/llama.cpp/<version>/``: the converter, its ``gguf-py`` package and the vocabulary-only
GGUF files of ``models/`` (real tokenizers of Llama, Qwen, Phi, Gemma, GPT-2 ..., which the family tests use).

``python -m lmforge.export.llamacpp`` (run by ``make install-dev``) fetches it once; ``$LMFORGE_LLAMA_CPP``
points at another copy. The converter needs ``sentencepiece`` and ``mistral-common`` (the ``export`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lmforge.errors import StageError
from lmforge.models import lmforge_home

VERSION = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp converts (also the slow tier's llama-simple)."""
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""SHA-256 of ``llama_cpp_python-<VERSION>.tar.gz`` on PyPI."""
KEPT = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
"""The parts of ``vendor/llama.cpp`` kept besides the vocabularies: the converter and its modules, ``gguf-py``
and the licence."""
VOCABULARIES = "models/ggml-vocab-"
"""The vocabulary files kept (``<prefix>*.gguf``, without their ``.inp``/``.out`` test files)."""
NEEDS = {"sentencepiece": "sentencepiece", "mistral_common": "mistral-common"}
"""Modules the converter imports, and the packages that provide them."""


class UnknownTokenizer(StageError):
    """llama.cpp does not recognise the tokenizer's pre-tokenizer (it knows those of published models by a hash
    of how they split a test text; a tokenizer trained from scratch is none of them)."""


def converter_dir() -> Path:
    """Where the pinned llama.cpp parts are (``$LMFORGE_LLAMA_CPP``, else under ``$LMFORGE_HOME``)."""
    chosen = os.environ.get("LMFORGE_LLAMA_CPP")
    return Path(chosen).expanduser() if chosen else lmforge_home() / "llama.cpp" / f"llama-cpp-python-{VERSION}"


def available() -> bool:
    """Whether the converter is there (fetched) and its Python dependencies are installed."""
    return (converter_dir() / "convert_hf_to_gguf.py").is_file() and not _missing_modules()


def vocab_file(name: str) -> Path:
    """The vocabulary-only GGUF ``models/ggml-vocab-<name>.gguf`` (``qwen2``, ``llama-bpe``, ``phi-3`` ...)."""
    return converter_dir() / f"{VOCABULARIES}{name}.gguf"


def fetch(target: Path | None = None) -> Path:
    """Download the pinned source distribution from the package index, check its hash and keep the converter,
    ``gguf-py`` and the vocabulary files in ``target`` (once; written whole or not at all)."""
    target = target or converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "-d", work, f"llama-cpp-python=={VERSION}"], check=True)
        archive = next(Path(work).glob("llama_cpp_python-*.tar.gz"))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SHA256:
            raise StageError(f"{archive.name}: SHA-256 {digest}, expected {SHA256}; not using it")
        staging = Path(work) / "kept"
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _kept(m.name.removeprefix(prefix))]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            tar.extractall(staging, members=members, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging, partial)
        partial.rename(target)
    return target


def _kept(name: str) -> bool:
    if name.startswith(VOCABULARIES):
        return name.endswith(".gguf")
    return any(name == part or (part.endswith("/") and name.startswith(part)) for part in KEPT)


def _missing_modules() -> list[str]:
    return [package for module, package in NEEDS.items() if importlib.util.find_spec(module) is None]


def convert(model_dir: Path, out_path: Path, out_type: str, name: str) -> None:
    """Write ``out_path`` (GGUF of ``out_type``: f16, bf16, q8_0, f32) from a Hugging Face folder with llama.cpp's
    converter, in a child process.

    Raises:
        UnknownTokenizer: llama.cpp does not know the tokenizer's pre-tokenizer.
        StageError: the converter is not fetched, a dependency is missing, or it cannot convert the model
            (an architecture llama.cpp does not know is named).
    """
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise StageError(
            f"llama.cpp's GGUF converter is not in {converter_dir()}: fetch it once with "
            "`python -m lmforge.export.llamacpp` (make install-dev does), or set LMFORGE_LLAMA_CPP"
        )
    if missing := _missing_modules():
        raise StageError(f"llama.cpp's converter needs {', '.join(missing)}: pip install 'lmforge[export]'")
    env = {**os.environ, "PYTHONPATH": str(converter_dir() / "gguf-py"), "NO_LOCAL_GGUF": ""}
    partial = out_path.with_name(out_path.name + ".partial")
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(partial), "--outtype", out_type]
    done = subprocess.run([*command, "--model-name", name], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        if "pre-tokenizer was not recognized" in done.stderr:
            raise UnknownTokenizer(
                f"llama.cpp {VERSION} does not recognise the pre-tokenizer of {model_dir}'s tokenizer"
            )
        raise StageError(f"llama.cpp's converter could not convert {model_dir}: {_reason(done.stderr)}")
    partial.replace(out_path)


def _reason(stderr: str) -> str:
    """The converter's own explanation (an unknown architecture is named), else its last line."""
    unknown = re.search(r"Model (\w+) is not supported", stderr)
    if unknown:
        return f"llama.cpp {VERSION} does not convert the architecture {unknown.group(1)}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


if __name__ == "__main__":
    print(f"llama.cpp converter and vocabularies (llama-cpp-python {VERSION}): {fetch()}")
