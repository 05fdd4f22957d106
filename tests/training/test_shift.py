import pytest
import torch
from peft import LoraConfig, get_peft_model

from personavec import PersonavecError
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.training.shift import finetuning_shift, load_finetuned

from tiny import tiny_loaded

QUESTIONS = ["How are you?", "What is bread?", "Tell me about the weather today."]


def vectors() -> list[PersonaVector]:
    generator = torch.Generator().manual_seed(3)
    return [PersonaVector(f"t{i}", torch.randn(4, 64, generator=generator), layer=i + 1) for i in range(2)]


def test_a_model_has_no_shift_from_itself() -> None:
    loaded = tiny_loaded()
    prompts = [loaded.chat(q) for q in QUESTIONS]
    assert finetuning_shift(loaded, loaded, vectors(), prompts) == {"t0": 0.0, "t1": 0.0}


def test_shift_of_an_adapter_equals_the_definition_in_float64(tmp_path) -> None:
    base = tiny_loaded()
    model = get_peft_model(tiny_loaded().model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    tuned = LoadedModel(model=model.eval(), tokenizer=base.tokenizer, identity=base.identity)
    prompts = [base.chat(q) for q in QUESTIONS]
    shifts = finetuning_shift(base, tuned, vectors(), prompts)

    def mean_last(lm, layer) -> torch.Tensor:  # mean over prompts of the last prompt token's residual
        rows = []
        for prompt in prompts:
            ids = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                rows.append(lm.model(ids, output_hidden_states=True).hidden_states[layer][0, -1].double())
        return torch.stack(rows).mean(0)

    for v in vectors():
        unit = v.at().double() / v.at().double().norm()
        expected = float((mean_last(tuned, v.layer) - mean_last(base, v.layer)) @ unit)
        assert shifts[v.trait] == pytest.approx(expected, abs=1e-5) and abs(expected) > 1e-4


def test_load_finetuned_refuses_a_directory_without_weights(tmp_path) -> None:
    with pytest.raises(PersonavecError, match="neither a LoRA adapter"):
        load_finetuned("smollm2", tmp_path)


def test_measure_shift_loads_base_then_adapter_and_judges(tiny_dir, tmp_path) -> None:
    from personavec.core.models import load_model
    from personavec.judges import make_judge
    from personavec.training.shift import measure_shift
    from personavec.traits import load_trait

    base = load_model(str(tiny_dir), dtype="float32", device="cpu")
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    identity = base.identity.to_dict()
    vs = [PersonaVector(v.trait, v.tensor, layer=v.layer, metadata={"model": identity}) for v in vectors()]
    trait = load_trait("optimistic")
    judge = make_judge("lexicon", trait)
    result = measure_shift(
        str(tiny_dir), tmp_path / "adapter", vs, trait, dtype="float32", device="cpu", judge=judge,
        out=tmp_path / "judged", sampling=Sampling(max_new_tokens=3, batch_size=32),
    )  # fmt: skip
    fresh = load_model(str(tiny_dir), dtype="float32", device="cpu")
    tuned = load_finetuned(str(tiny_dir), tmp_path / "adapter", dtype="float32", device="cpu")
    prompts = [fresh.chat(q) for q in trait.evaluation_questions]
    expected = finetuning_shift(fresh, tuned, vs, prompts)
    assert result.shift == pytest.approx(expected, abs=1e-5) and result.questions == len(prompts)
    assert result.judged is not None and set(result.judged) == {"trait", "trait_ci95", "coherence"}
    assert (tmp_path / "judged" / "answers.jsonl").exists() and result.to_dict()["trait"] == "optimistic"
    with pytest.raises(PersonavecError, match=r"^judge needs out"):
        measure_shift(str(tiny_dir), tmp_path / "adapter", vs, trait, judge=judge)
