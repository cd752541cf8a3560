"""Every training stage on a tiny model built in-process: the loss falls, weights move, and the
loss under a fixed seed stays what it was (a regression guard for the data path and the loss)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, build_tiny_tokenizer, qa_rows, write_jsonl
from safetensors.torch import load_file
from test_train_models import build_tiny_bert, build_tiny_t5, letters, save_model

from lmforge.config import load_recipe
from lmforge.errors import StageError
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir

pytestmark = pytest.mark.integration

DOCUMENTS = [
    "Article 15. The retirement age is 64 years. A person who reaches it may claim the old-age pension.",
    "Article 7. Employees contribute 8.15% of their gross earnings; employers add 11.2%.",
    "Article 39. An objection may be lodged with the Review Committee within 21 days of notification.",
    "Article 32. Sickness benefit is paid from the fourth day of incapacity for work, at 70% of earnings.",
] * 3


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_model(*build_tiny_bert(), tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return save_model(*build_tiny_t5(), tmp_path_factory.mktemp("tiny-t5"))


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def logged(run: Path, stage: str, key: str = "loss") -> list[float]:
    lines = (run / stage / "train_log.jsonl").read_text().splitlines()
    return [entry[key] for entry in map(json.loads, lines) if key in entry]


def domain_data(tmp_path: Path) -> str:
    """Sources: documents (text) and question/answer pairs about them; returns the recipe's data section."""
    write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS[:4]])
    pairs = [(f"What does article {n} say?", doc) for n, doc in zip((15, 7, 39, 32), DOCUMENTS[:4], strict=True)]
    write_jsonl(tmp_path / "qa.jsonl", qa_rows(pairs * 2))
    # sft trains on the question file alone (no questions generated from the documents): losses are pinned
    return """data:
  sources:
    - {path: docs.jsonl, split: documents}
    - {path: qa.jsonl, split: train}
  questions: {enabled: false}
"""


TRAIN = "precision: fp32, logging_steps: 1, warmup_ratio: 0.0, report_to: []"


def test_cpt_trains_on_text_and_sft_inherits_the_merged_adapter(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path,
        f"""
name: chain
run_dir: {tmp_path / "runs"}
stages: [data, cpt, sft]
model: {{ref: {tiny_model_dir}}}
{domain_data(tmp_path)}
cpt: {{splits: [documents], max_length: 32, batch_size: 2, epochs: 3, lr: 5.0e-3, {TRAIN}}}
sft: {{batch_size: 4, epochs: 1, lr: 5.0e-3, max_length: 128, {TRAIN}}}
""",
    )
    results = run_recipe(load_recipe(recipe))
    run = tmp_path / "runs" / "chain"
    cpt_losses = logged(run, "cpt")
    assert cpt_losses[-1] < cpt_losses[0] - 0.1, cpt_losses
    assert results["cpt"].metrics["rows"] >= 4 and results["cpt"].metrics["documents"] == 4
    adapter = load_file(run / "cpt" / "adapter" / "adapter_model.safetensors")
    assert any(torch.count_nonzero(t) for name, t in adapter.items() if "lora_B" in name)
    # Expected loss under the fixed seed (tiny random Llama, 4 documents packed into 32-token rows).
    assert cpt_losses[0] == pytest.approx(5.99794, abs=2e-3)

    sft = StageDir.open(run, "sft").manifest
    assert sft["inputs"]["starts_from"]["how"] == "cpt-merge"
    # every training stage records what it trained on the same way: inputs.train, a list of files
    for manifest in (StageDir.open(run, "cpt").manifest, sft):
        assert isinstance(manifest["inputs"]["train"], list) and manifest["inputs"]["train"]
    assert sft["outputs"]["base_model"] == str(run / "sft" / "base")
    merged = load_file(next((run / "sft" / "base").glob("*.safetensors")))
    original = load_file(next(Path(tiny_model_dir).glob("*.safetensors")))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[name], original[name]), "the cpt adapter was not merged into sft/base"
    # A changed cpt setting re-runs cpt and the sft that inherits from it.
    again = run_recipe(load_recipe(recipe, ["cpt.epochs=2"]))
    assert not again["cpt"].skipped and not again["sft"].skipped


def test_cpt_on_splits_without_text_fails_naming_them_and_marks_the_stage_failed(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path,
        f"""
name: notext
run_dir: {tmp_path / "runs"}
stages: [data, cpt]
model: {{ref: {tiny_model_dir}}}
{domain_data(tmp_path)}
cpt: {{splits: [train], max_length: 32, {TRAIN}}}
""",
    )
    with pytest.raises(StageError, match=r"cpt needs text records, and the split\(s\) \['train'\] hold none"):
        run_recipe(load_recipe(recipe))
    assert StageDir.open(tmp_path / "runs" / "notext", "cpt").status == "failed"


def test_sft_stacks_on_the_cpt_adapter_as_one_exact_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(
        tmp_path,
        f"""
name: stack
run_dir: {tmp_path / "runs"}
stages: [data, cpt, sft]
model: {{ref: {tiny_model_dir}}}
{domain_data(tmp_path)}
cpt: {{splits: [documents], max_length: 32, batch_size: 2, epochs: 1, lr: 5.0e-3, lora: {{r: 4, alpha: 8}}, {TRAIN}}}
sft: {{chain: stack, batch_size: 2, epochs: 2, lr: 5.0e-3, lora: {{r: 8, alpha: 16}}, {TRAIN}}}
""",
    )
    run_recipe(load_recipe(recipe))
    run = tmp_path / "runs" / "stack"
    outputs = StageDir.open(run, "sft").manifest["outputs"]
    assert outputs["stacked_ranks"] == {"first": 4, "second": 8, "stacked": 12}
    assert outputs["base_model"] == str(tiny_model_dir)

    ids = torch.tensor([[5, 17, 42, 99, 123, 7, 64]])

    def logits(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    stacked = logits(PeftModel.from_pretrained(base(), str(run / "sft" / "adapter")))
    cpt_merged = PeftModel.from_pretrained(base(), str(run / "cpt" / "adapter")).merge_and_unload()
    expected = logits(PeftModel.from_pretrained(cpt_merged, outputs["sft_only_adapter"]))
    torch.testing.assert_close(stacked, expected, atol=1e-5, rtol=1e-5)
    cpt_only = logits(PeftModel.from_pretrained(base(), str(run / "cpt" / "adapter")))
    assert not torch.allclose(stacked, cpt_only, atol=1e-4), "the sft part of the stack is empty"
    assert not torch.allclose(cpt_only, logits(base()), atol=1e-4), "the cpt part of the stack is empty"


def test_mlm_pretrains_a_tiny_bert(tmp_path, tiny_bert_dir):
    write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    recipe = write_recipe(
        tmp_path,
        f"""
name: mlm
run_dir: {tmp_path / "runs"}
stages: [data, mlm]
model: {{ref: {tiny_bert_dir}}}
data:
  sources: [{{path: docs.jsonl}}]
  dedup: {{exact: false}}
mlm: {{max_length: 32, batch_size: 4, epochs: 8, lr: 2.0e-3, mlm_probability: 0.3, {TRAIN}}}
""",
    )
    result = run_recipe(load_recipe(recipe))["mlm"]
    run = tmp_path / "runs" / "mlm"
    losses = logged(run, "mlm")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    before = load_file(tiny_bert_dir / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(before[name], after[name])
    assert (result.model_dir / "tokenizer.json").is_file()
    assert losses[0] == pytest.approx(4.77770, abs=2e-3)  # near ln(vocab): a random MLM head


def test_seq2seq_learns_json_fields_and_scores_them(tmp_path, tiny_t5_dir):
    write_jsonl(tmp_path / "train.jsonl", letters(24))
    write_jsonl(tmp_path / "test.jsonl", letters(6, offset=24))
    recipe = write_recipe(
        tmp_path,
        f"""
name: extract
run_dir: {tmp_path / "runs"}
stages: [data, seq2seq]
model: {{ref: {tiny_t5_dir}}}
data:
  sources:
    - {{path: train.jsonl, split: train}}
    - {{path: test.jsonl, split: test}}
seq2seq: {{epochs: 6, lr: 3.0e-3, batch_size: 8, max_input_length: 96, max_output_length: 64, {TRAIN}}}
""",
    )
    result = run_recipe(load_recipe(recipe))["seq2seq"]
    run = tmp_path / "runs" / "extract"
    losses = logged(run, "seq2seq")
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.metrics["added_tokens"] == ["{", "}"]
    before = load_file(tiny_t5_dir / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert not torch.allclose(before[name], after[name])
    assert after["shared.weight"].shape[0] == before["shared.weight"].shape[0] + 2  # rows for '{' and '}'
    assert losses[0] == pytest.approx(6.40876, abs=2e-3)
    summary = json.loads((run / "seq2seq" / "summary.json").read_text())
    scores = summary["test"]["tuned"]
    assert scores["n"] == 6 and set(scores["fields"]) == {"claimant", "office", "benefit", "monthly_amount"}
    assert "base" in summary["test"]
    rows = (run / "seq2seq" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 6 and set(json.loads(rows[0])["outputs"]) == {"tuned", "base"}
    # valid_json is the share of the tuned model's outputs that parse as a JSON object (recounted here)
    tuned = [json.loads(row)["outputs"]["tuned"] for row in rows]
    parsed = [_json_object(text) for text in tuned]
    assert scores["valid_json"] == pytest.approx(sum(parsed) / 6, abs=1e-4)
    schema = json.loads((run / "seq2seq" / "schema.json").read_text())
    assert schema["properties"]["monthly_amount"] == {"type": "integer"}


def test_seq2seq_refuses_a_decoder_only_model(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "train.jsonl", letters(4))
    recipe = write_recipe(
        tmp_path,
        f"""
name: wrong
run_dir: {tmp_path / "runs"}
stages: [data, seq2seq]
model: {{ref: {tiny_model_dir}}}
data: {{sources: [{{path: train.jsonl}}]}}
""",
    )
    with pytest.raises(StageError, match="encoder-decoder"):
        run_recipe(load_recipe(recipe))


def tiny_teacher(tmp_path: Path) -> Path:
    """Another tiny Llama (other weights, the same tokenizer) saved as a teacher folder."""
    tokenizer = build_tiny_tokenizer()
    return save_model(build_tiny_llama(tokenizer, seed=1), tokenizer, tmp_path / "teacher")


def test_sft_distills_a_teacher_from_precomputed_top_k(tmp_path, tiny_model_dir):
    teacher_dir = tiny_teacher(tmp_path)
    recipe = write_recipe(
        tmp_path,
        f"""
name: distill
run_dir: {tmp_path / "runs"}
stages: [data, sft]
model: {{ref: {tiny_model_dir}}}
{domain_data(tmp_path)}
sft: {{distill: {{teacher: {teacher_dir}, alpha: 0.5, top_k: 8, temperature: 2.0}},
  batch_size: 4, epochs: 3, lr: 5.0e-3, {TRAIN}}}
""",
    )
    run_recipe(load_recipe(recipe))
    run = tmp_path / "runs" / "distill"
    losses = logged(run, "sft")
    assert losses[-1] < losses[0], losses
    topk = load_file(run / "sft" / "teacher" / "topk.safetensors")
    assert topk["ids"].shape[1] == 8 and topk["offsets"][-1] == topk["ids"].shape[0]
    assert losses[0] == pytest.approx(10.64149, abs=2e-3)  # 0.5 * CE + 0.5 * 2^2 * KL


def test_distillation_refuses_a_teacher_with_another_tokenizer(tmp_path, tiny_model_dir, tiny_t5_dir):
    from lmforge.train.distill import check_same_tokenizer

    t5_tokenizer = build_tiny_t5()[1]
    with pytest.raises(StageError, match="shared tokenizer"):
        check_same_tokenizer(t5_tokenizer, build_tiny_tokenizer(), "t5")


def test_sft_validates_keeps_the_best_checkpoint_and_stops_early(tmp_path, tiny_model_dir):
    pairs = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(16)]
    write_jsonl(tmp_path / "qa.jsonl", qa_rows(pairs))
    recipe = write_recipe(
        tmp_path,
        f"""
name: val
run_dir: {tmp_path / "runs"}
stages: [data, sft]
model: {{ref: {tiny_model_dir}}}
data: {{sources: [{{path: qa.jsonl}}], val_fraction: 0.25}}
sft: {{batch_size: 2, epochs: 4, lr: 5.0e-3, eval_steps: 2, early_stopping_patience: 2,
  early_stopping_threshold: 100.0, precision: fp32, logging_steps: 1}}
""",
    )
    metrics = run_recipe(load_recipe(recipe))["sft"].metrics
    run = tmp_path / "runs" / "val"
    evals = logged(run, "sft", "eval_loss")
    # A threshold of 100 makes no validation an improvement: training stops after 1 + patience validations.
    assert len(evals) == 3 and metrics["steps"] == 6 and metrics["stopped_early"] is True
    assert logged(run, "sft")[0] == pytest.approx(5.99217, abs=2e-3)  # expected loss under the fixed seed
    assert metrics["best_eval_loss"] == pytest.approx(min(evals), abs=1e-5)
    assert not (run / "sft" / "checkpoints").exists()
    assert list((run / "sft" / "tensorboard").glob("events.out.tfevents.*"))


def test_distillation_with_a_validation_split(tmp_path, tiny_model_dir):
    """Validation batches have no teacher distributions: they use the plain collator (this crashed before)."""
    teacher_dir = tiny_teacher(tmp_path)
    recipe = write_recipe(
        tmp_path,
        f"""
name: distill-val
run_dir: {tmp_path / "runs"}
stages: [data, sft]
model: {{ref: {tiny_model_dir}}}
{domain_data(tmp_path)}
  val_fraction: 0.25
sft: {{distill: {{teacher: {teacher_dir}, top_k: 4}}, batch_size: 4, epochs: 2, lr: 5.0e-3, {TRAIN}}}
""",
    )
    run_recipe(load_recipe(recipe))
    metrics = json.loads((tmp_path / "runs" / "distill-val" / "sft" / "manifest.json").read_text())["metrics"]
    assert metrics["eval_loss"] > 0 and metrics["best_eval_loss"] <= metrics["eval_loss"]


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _text_loss(model_dir: Path, texts: list[str]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        losses = [model(**(batch := tokenizer(t, return_tensors="pt")), labels=batch["input_ids"]).loss for t in texts]
    return float(torch.stack(losses).mean())


def test_sft_with_the_documents_mixed_in_learns_their_text(tmp_path, tiny_model_dir):
    """sft.documents: the text is trained on (loss on every token) with the questions; without it, it is not."""
    runs = {}
    for mixed in (False, True):
        folder = tmp_path / ("mixed" if mixed else "plain")
        folder.mkdir()
        documents = f"{{enabled: {str(mixed).lower()}, copies: 2, order: questions_first}}"
        recipe = write_recipe(
            folder,
            f"""
name: docs
run_dir: {folder / "runs"}
stages: [data, sft]
model: {{ref: {tiny_model_dir}}}
{domain_data(folder)}
sft: {{method: full, batch_size: 4, epochs: 4, lr: 3.0e-3, max_length: 128, documents: {documents}, {TRAIN}}}
""",
        )
        run_recipe(load_recipe(recipe))
        runs[mixed] = folder / "runs" / "docs"
    metrics = {mixed: StageDir.open(run, "sft").manifest["metrics"] for mixed, run in runs.items()}
    assert metrics[True]["document_examples"] == 8 and "document_examples" not in metrics[False]
    assert metrics[True]["examples"] == metrics[False]["examples"] + 8
    # the documents' own sentences (as the documents split holds them, without the added headings)
    losses = {mixed: _text_loss(run / "sft" / "model", DOCUMENTS[:4]) for mixed, run in runs.items()}
    assert losses[True] < losses[False] - 0.3, losses  # identical runs (equal losses) when nothing is mixed in
