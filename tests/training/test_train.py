import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback, TrainingArguments

from personavec import PersonavecError
from personavec.cli import main
from personavec.core.vectors import PersonaVector, save_vectors
from personavec.runs.readers import TrainingRun
from personavec.training.sft_data import Collator, encode
from personavec.training.shift import finetuning_shift, load_finetuned
from personavec.training.train import InterventionTrainer, TrainConfig, TrainIntervention, train_model
from personavec.traits import load_trait

from tiny import tiny_loaded

LAYER = 2


def conversations(n: int) -> list[dict]:
    words = ["lovely", "terrible", "bread", "weather", "happy", "gloomy"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about {words[i % 6]} {i}"},
                {"role": "assistant", "content": " ".join(words[(i + k) % 6] for k in range(2 + i % 3))},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in conversations(16)))
    return path


def vector(loaded, seed: int = 0) -> PersonaVector:
    generator = torch.Generator().manual_seed(seed)
    shape = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    tensor = torch.randn(shape, generator=generator)
    return PersonaVector("t", tensor, layer=LAYER, metadata={"model": loaded.identity.to_dict()})


def config(method: str = "none", **kwargs) -> TrainConfig:
    spec = TrainIntervention(
        method=method, coef=kwargs.pop("coef", 3.0), weight=kwargs.pop("weight", 0.5), **kwargs
    )
    return TrainConfig(batch_size=4, learning_rate=1e-3, save_steps=2, logging_steps=1, intervention=spec)


def blocks(model) -> torch.nn.ModuleList:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers


def hooks_on(model) -> int:
    return sum(len(b._forward_hooks) + len(b._forward_pre_hooks) for b in blocks(model))


def lora_model(loaded):
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # a trained-looking adapter, so that it changes the activations
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def batch(loaded):
    examples = [encode(loaded.tokenizer, r["messages"], 64) for r in conversations(3)]
    return Collator(int(loaded.tokenizer.pad_token_id))(examples)


def step_loss(loaded, model, spec, v, tmp_path) -> torch.Tensor:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = InterventionTrainer(model=model, args=args, spec=spec, vector=v)
    model.train()
    return trainer.compute_loss(model, batch(loaded))


def hand_loss(model, inputs, edit) -> torch.Tensor:
    """The loss with `edit(layer, hidden)` applied by plain forward hooks on the blocks."""

    def hook(layer):
        def run(_module, _args, output):
            if isinstance(output, tuple):
                return (edit(layer, output[0]), *output[1:])
            return edit(layer, output)

        return run

    handles = [b.register_forward_hook(hook(i + 1)) for i, b in enumerate(blocks(model))]
    try:
        return model(**inputs).loss
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("all_layers", [False, True])
def test_steering_adds_the_vector_in_the_training_forward(tmp_path, all_layers) -> None:
    loaded = tiny_loaded()
    model, v = lora_model(loaded), vector(loaded)
    spec = TrainIntervention(method="steer", coef=3.0, all_layers=all_layers)
    loss = step_loss(loaded, model, spec, v, tmp_path)
    real = batch(loaded)["attention_mask"].unsqueeze(-1).float()

    def edit(layer, hidden):
        if all_layers:
            return hidden + 3.0 * (v.tensor[layer] - v.tensor[layer - 1]) * real
        return hidden + 3.0 * v.tensor[layer] * real if layer == LAYER else hidden

    expected = hand_loss(model, batch(loaded), edit)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss.item() != pytest.approx(hand_loss(model, batch(loaded), lambda _, h: h).item(), abs=1e-3)
    assert hooks_on(model) == 0


def test_caft_projects_the_direction_out(tmp_path) -> None:
    loaded = tiny_loaded()
    model, v = lora_model(loaded), vector(loaded)
    loss = step_loss(loaded, model, TrainIntervention(method="ablate"), v, tmp_path)
    unit = (v.tensor[LAYER] / v.tensor[LAYER].norm()).double()
    real = batch(loaded)["attention_mask"].unsqueeze(-1).double()

    def edit(layer, hidden):
        if layer != LAYER:
            return hidden
        h = hidden.double()
        return (h - (h @ unit).unsqueeze(-1) * unit * real).float()  # h ← h − (h·v̂)v̂

    assert loss.item() == pytest.approx(hand_loss(model, batch(loaded), edit).item(), abs=1e-5)


def test_regularisation_adds_the_projection_shift_penalty(tmp_path) -> None:
    loaded = tiny_loaded()
    model, v = lora_model(loaded), vector(loaded)
    loss = step_loss(loaded, model, TrainIntervention(method="regularize", weight=100.0), v, tmp_path)
    inputs = batch(loaded)
    answer = (inputs["labels"] != -100).double()
    unit = (v.tensor[LAYER] / v.tensor[LAYER].norm()).double()

    def mean_projection(out) -> torch.Tensor:
        # hidden_states[ℓ] is block ℓ's output for ℓ < L (the docs' Concepts page, layers)
        projections = out.hidden_states[LAYER].double() @ unit
        return (projections * answer).sum(-1) / answer.sum(-1)

    with torch.no_grad():
        tuned = model(**inputs, output_hidden_states=True)
        with model.disable_adapter():
            base = model(**inputs, output_hidden_states=True)
    penalty = 100.0 * ((mean_projection(tuned) - mean_projection(base)) ** 2).mean()
    assert (loss - tuned.loss).item() == pytest.approx(penalty.item(), rel=1e-4)
    assert (mean_projection(tuned) - mean_projection(base)).abs().max() > 1e-3  # the penalty is not zero


class Spy(TrainerCallback):
    """Records, for every forward of the watched block, whether training and how many hooks it had."""

    def __init__(self):
        self.calls: list[tuple[bool, int]] = []

    def on_train_begin(self, args, state, control, model=None, **kw):
        block = blocks(model)[LAYER - 1]

        def pre(module, _args):
            self.calls.append((model.training, len(module._forward_hooks)))

        block.register_forward_pre_hook(pre)


def test_active_in_every_training_step_only_and_gone_afterwards(data, tmp_path) -> None:
    loaded = tiny_loaded()
    spy = Spy()
    result = train_model(
        loaded, data, tmp_path / "run", config("steer"), vector(loaded), [spy], eval_data=data
    )
    assert result.steps == 4 and result.steps_intervened == 4
    training = [hooks for is_training, hooks in spy.calls if is_training]
    evaluating = [hooks for is_training, hooks in spy.calls if not is_training]
    assert len(training) == 4 and len(evaluating) >= 4  # evaluation ran inside training
    assert set(training) == {1} and set(evaluating) == {0}  # the steering hook, in training steps only


def test_saved_adapter_loads_without_hooks_and_equals_the_trained_model(tiny_dir, data, tmp_path) -> None:
    from personavec.core.models import load_model

    loaded = load_model(str(tiny_dir), dtype="float32", device="cpu")
    train_model(loaded, data, tmp_path / "run", config("steer"), vector(loaded))
    assert hooks_on(loaded.model) == 0  # nothing left on the trained model
    fresh = load_finetuned(str(tiny_dir), tmp_path / "run" / "final", dtype="float32", device="cpu")
    assert hooks_on(fresh.model) == 0
    inputs = batch(fresh)
    with torch.no_grad():
        loaded.model.eval()
        assert torch.allclose(fresh.model(**inputs).logits, loaded.model(**inputs).logits, atol=1e-5)


def all_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Boom(TrainerCallback):
    """Makes the last block raise inside the 3rd training forward pass, while the intervention is on."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        calls = []

        def explode(module, _args, _output):
            calls.append(1)
            if model.training and len(calls) == 3:
                raise RuntimeError("boom")

        self.handle = blocks(model)[-1].register_forward_hook(explode)


def test_hooks_are_removed_after_an_exception_and_the_run_resumes(data, tmp_path) -> None:
    loaded = tiny_loaded()
    before = all_hooks(loaded.model)
    boom = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        train_model(loaded, data, tmp_path / "run", config("ablate"), vector(loaded), [boom])
    boom.handle.remove()
    assert all_hooks(loaded.model) == before  # the ablation's hooks went with the exception
    assert (tmp_path / "run" / "checkpoint-2").exists() and not (tmp_path / "run" / "final").exists()
    resumed = train_model(tiny_loaded(), data, tmp_path / "run", config("ablate"), vector(tiny_loaded()))
    clean = train_model(tiny_loaded(), data, tmp_path / "clean", config("ablate"), vector(tiny_loaded()))
    assert resumed.steps == clean.steps == 4
    from safetensors.torch import load_file

    a = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "clean" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_settings_are_clear(data, tmp_path) -> None:
    loaded = tiny_loaded()
    with pytest.raises(PersonavecError, match="needs a vector"):
        train_model(loaded, data, tmp_path / "a", config("steer"))
    with pytest.raises(PersonavecError, match="layer 9 is out of range"):
        train_model(loaded, data, tmp_path / "b", config("steer", layer=9), vector(loaded))
    big = PersonaVector("big", torch.randn(31, 576), layer=10)
    with pytest.raises(PersonavecError, match="made for another model"):
        train_model(loaded, data, tmp_path / "c", config("ablate"), big)
    with pytest.raises(PersonavecError, match="regularize needs LoRA"):
        train_model(
            loaded,
            data,
            tmp_path / "d",
            TrainConfig(lora=False, intervention=TrainIntervention("regularize", weight=1)),
            vector(loaded),
        )


def test_cli_bad_input_is_one_line_exit_2(tiny_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(conversations(1)[0])
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}]})
        + "\n"
    )
    args = ["train", str(bad), "--model", str(tiny_dir), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"personavec: error: {bad}:2: the conversation has no assistant turn; "
        + "fix the row (training data is not skipped)"
    )
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in conversations(4)))
    big = tmp_path / "big.safetensors"
    save_vectors(big, [PersonaVector("big", torch.randn(31, 576), layer=10)])
    assert (
        main(
            [
                "train",
                str(good),
                "--model",
                str(tiny_dir),
                "--out",
                str(tmp_path / "o"),
                "--vector",
                str(big),
                "--intervention",
                "steer",
                "--coef",
                "2",
            ]
        )
        == 2
    )
    assert "made for another model" in capsys.readouterr().err.splitlines()[-1]


def test_long_conversations_are_cut_with_one_warning(data, tmp_path) -> None:
    loaded = tiny_loaded()
    lengths = sorted(
        len(encode(loaded.tokenizer, r["messages"], 10_000).input_ids) for r in conversations(16)
    )
    cut = lengths[8]
    with pytest.warns(UserWarning) as caught:
        train_model(loaded, data, tmp_path / "run", replace(config(), max_length=cut))
    warnings = [str(w.message) for w in caught if "conversations cut" in str(w.message)]
    n = sum(length > cut for length in lengths)
    assert 0 < n < 16 and warnings == [f"{n} of 16 conversations cut to --max-length {cut}"]
    with pytest.raises(PersonavecError, match="no conversation keeps an assistant token within max_length 5"):
        train_model(tiny_loaded(), data, tmp_path / "short", replace(config(), max_length=5))


def test_dropped_conversations_are_reported_apart_from_cut_ones(tmp_path) -> None:
    loaded = tiny_loaded()
    rows = conversations(4)
    long_prompt = {"role": "user", "content": " ".join(["weather"] * 200)}
    rows += [{"messages": [long_prompt, r["messages"][1]]} for r in conversations(2)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    longest = max(len(encode(loaded.tokenizer, r["messages"], 10_000).input_ids) for r in rows[:4])
    with pytest.warns(UserWarning) as caught:
        trained = train_model(loaded, path, tmp_path / "run", replace(config(), max_length=longest))
    messages = [str(w.message) for w in caught if "conversations" in str(w.message)]
    assert messages == [f"2 of 6 conversations dropped (no assistant token within --max-length {longest})"]
    assert (trained.truncated, trained.dropped) == (0, 2)


def test_two_processes_train_with_the_intervention(tiny_dir, data, tmp_path) -> None:
    import os
    import subprocess
    import sys

    v = tmp_path / "v.safetensors"
    save_vectors(v, [vector(tiny_loaded())])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "personavec.cli"]
    command += [
        "train",
        str(data),
        "--model",
        str(tiny_dir),
        "--out",
        str(tmp_path / "run"),
        "--batch-size",
        "2",
    ]
    command += ["--lr", "1e-3", "--vector", str(v), "--intervention", "steer", "--coef", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("4 steps in") == 1  # 16 conversations / (2 processes × 2): the main one reports
    trained = json.loads((tmp_path / "run" / "trained.json").read_text())
    assert trained["steps"] == trained["steps_intervened"] == 4
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_full_finetuning_saves_a_loadable_model(tiny_dir, data, tmp_path) -> None:
    from personavec.core.models import load_model

    loaded = load_model(str(tiny_dir), dtype="float32", device="cpu")
    full = replace(config("steer"), lora=False)
    result = train_model(loaded, data, tmp_path / "run", full, vector(loaded))
    assert result.steps == result.steps_intervened == 4
    fresh = load_finetuned(str(tiny_dir), result.out, dtype="float32", device="cpu")  # weights and tokenizer
    inputs = batch(fresh)
    with torch.no_grad():
        assert torch.allclose(fresh.model(**inputs).logits, loaded.model.eval()(**inputs).logits, atol=1e-5)
    again = train_model(
        load_model(str(tiny_dir), dtype="float32", device="cpu"), data, tmp_path / "run", full, vector(loaded)
    )
    assert again == result  # a finished run is not trained twice


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--intervention", "steer"], "--intervention steer needs a nonzero --coef"),
        (["--all-layers", "--layer", "2"], "--all-layers steers at each block: drop --layer"),
        (["--lr", "0"], "--lr and --epochs must be positive"),  # a field whose flag is not its name
        (["--drift-stop"], "--drift-stop, --drift-vector and --drift-trait need --drift-every N"),
        (["--during-eval"], "--during-eval needs --eval-data"),
        (["--config", "CONFIG"], "unknown setting 'colour'"),
    ],
)
def test_cli_refuses_flags_that_would_do_nothing(tiny_dir, data, tmp_path, capsys, extra, message) -> None:
    (tmp_path / "c.json").write_text('{"intervention": "steer", "colour": "red"}')
    extra = [str(tmp_path / "c.json") if x == "CONFIG" else x for x in extra]
    assert main(["train", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_config_file_sets_options_the_command_line_does_not(tiny_dir, data, tmp_path, capsys) -> None:
    v = tmp_path / "v.safetensors"
    save_vectors(v, [vector(tiny_loaded())])
    (tmp_path / "c.json").write_text('{"intervention": "steer", "coef": 2.5, "lr": 0.001, "batch-size": 2}')
    args = ["train", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "o"), "--vector", str(v)]
    assert main([*args, "--config", str(tmp_path / "c.json"), "--batch-size", "4"]) == 0
    settings = TrainingRun(tmp_path / "o").manifest["config"]
    assert settings["intervention"]["method"] == "steer" and settings["intervention"]["coef"] == 2.5
    assert settings["learning_rate"] == 0.001 and settings["batch_size"] == 4  # the command line wins
    assert "4 steps in" in capsys.readouterr().out


def test_cli_commands_take_a_trained_adapter(tiny_dir, data, tmp_path, capsys) -> None:
    from personavec.core.models import load_model

    loaded = load_model(str(tiny_dir), dtype="float32", device="cpu")
    result = train_model(loaded, data, tmp_path / "run", config("steer"), vector(loaded))
    v = tmp_path / "v.safetensors"
    save_vectors(v, [vector(loaded)])
    steer = [
        "steer",
        "--model",
        str(tiny_dir),
        "--vector",
        f"{v}:-1",
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "3",
    ]
    assert main([*steer, "--adapter", str(result.out)]) == 0
    assert main([*steer, "--adapter", str(tmp_path)]) == 2
    assert "is not a LoRA adapter directory" in capsys.readouterr().err
    shift = ["shift", "--model", str(tiny_dir), "--finetuned", str(result.out), "--vector", str(v)]
    assert main([*shift, "--trait", "optimistic", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    base = load_model(str(tiny_dir), dtype="float32", device="cpu")
    tuned = load_finetuned(str(tiny_dir), result.out, dtype="float32", device="cpu")
    prompts = [base.chat(q) for q in load_trait("optimistic").evaluation_questions]
    expected = finetuning_shift(base, tuned, [vector(base)], prompts)
    assert printed["shift"]["t"] == pytest.approx(expected["t"], abs=1e-5) and abs(expected["t"]) > 1e-5
