import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import personavec
from personavec import PersonaVector, save_vectors
from personavec.cli import main
from personavec.core.models import ModelIdentity
from personavec.core.vectors import read_gguf

from tiny import N_LAYERS

NO_NORM = "records no residual norm"
SMOL = ModelIdentity(name="smollm2", architecture="llama", n_layers=30, hidden_size=576)


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, pattern: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]  # before it, at most the progress bars of loading a model
    assert line.startswith("personavec: error: ") and "Traceback" not in err
    assert pattern in line, err


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "personavec.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("personavec 0.")


def test_error_is_one_line_exit_2_in_a_real_process(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "personavec.cli", "vectors", "show", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
    )
    assert (
        out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "vector file not found" in out.stderr
    )


def test_models_inspect_smollm2_json(capsys) -> None:
    assert main(["models", "inspect", "smollm2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 30 and info["hidden_size"] == 576
    assert info["architecture"] == "llama" and info["chat_template"] is True
    assert info["blocks_path"] == "model.layers" and info["n_residual_layers"] == 31


def test_vectors_show_and_export(tmp_path, capsys) -> None:
    vector = PersonaVector("evil", torch.randn(31, 576), layer=20, metadata={"model": SMOL.to_dict()})
    save_vectors(tmp_path / "evil.safetensors", [vector])
    assert main(["vectors", "show", str(tmp_path / "evil.safetensors"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["response-avg"]
    assert shown["shape"] == [31, 576] and shown["layer"] == 20 and len(shown["norms"]) == 31
    assert main(["vectors", "show", str(tmp_path / "evil.safetensors")]) == 0
    assert "evil [response-avg] shape [31, 576], chosen layer 20" in capsys.readouterr().out
    assert (
        main(["vectors", "export-gguf", str(tmp_path / "evil.safetensors"), str(tmp_path / "evil.gguf")]) == 0
    )
    assert list(read_gguf(tmp_path / "evil.gguf")) == [19]
    assert "direction.19" in capsys.readouterr().out
    normed = PersonaVector("evil", vector.tensor, layer=20, metadata={"residual_norm": [3.0] * 31})
    save_vectors(tmp_path / "normed.safetensors", [normed])
    argv = ["vectors", "export-gguf", str(tmp_path / "normed.safetensors"), str(tmp_path / "n.gguf")]
    assert main([*argv, "--coef", "0.5", "--coef-units", "norm"]) == 0
    want = 0.5 * 3.0 / vector.tensor[20].double().norm() * vector.tensor[20].double()
    assert torch.allclose(read_gguf(tmp_path / "n.gguf")[19].double(), want, rtol=1e-5)
    argv = ["vectors", "export-gguf", str(tmp_path / "evil.safetensors"), str(tmp_path / "x.gguf")]
    _one_line_error(capsys, main([*argv, "--coef-units", "norm"]), NO_NORM)


def test_import_pt(tmp_path, capsys) -> None:
    torch.save(torch.randn(31, 576), tmp_path / "evil.pt")
    out = tmp_path / "evil.safetensors"
    assert (
        main(
            [
                "vectors",
                "import-pt",
                str(tmp_path / "evil.pt"),
                str(out),
                "--model",
                "smollm2",
                "--trait",
                "evil",
            ]
        )
        == 0
    )
    assert "31 layers × 576" in capsys.readouterr().out
    torch.save(torch.randn(N_LAYERS + 1, 64), tmp_path / "small.pt")
    code = main(
        [
            "vectors",
            "import-pt",
            str(tmp_path / "small.pt"),
            str(out),
            "--model",
            "smollm2",
            "--trait",
            "evil",
        ]
    )
    _one_line_error(capsys, code, "smollm2 has 30 blocks, hidden 576")


def test_unwritable_output_and_repeated_layers(tmp_path, capsys) -> None:
    save_vectors(tmp_path / "v.safetensors", [PersonaVector("evil", torch.randn(31, 576), layer=20)])
    umask = os.umask(0o022)
    try:
        save_vectors(tmp_path / "v.safetensors", [PersonaVector("evil", torch.randn(31, 576), layer=20)])
    finally:
        os.umask(umask)
    assert (tmp_path / "v.safetensors").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    argv = ["vectors", "export-gguf", str(tmp_path / "v.safetensors")]
    assert main([*argv, str(tmp_path / "cv.gguf"), "--layer", "5", "--layer", "5"]) == 0
    assert list(read_gguf(tmp_path / "cv.gguf")) == [4]
    capsys.readouterr()
    _one_line_error(capsys, main([*argv, "/proc/no/such/dir/cv.gguf"]), "No such file or directory: /proc/no")


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["models", "inspect", "no/such-model"], "cannot load model 'no/such-model'"),
        (["vectors", "export-gguf", "{bad}", "{tmp}/x.gguf"], "NaN or inf"),
        (["vectors", "export-gguf", "{good}", "{tmp}/x.gguf", "--layer", "31"], "layer 31 is out of range"),
        (["vectors", "show", "{tmp}/missing.safetensors"], "vector file not found"),
        (["extract", "--trait", "evil", "--judge", "lexicon"], "lexicon judge only scores sentiment-like"),
        (["extract", "--trait", "evil", "--judge", "openai:gpt-4.1-mini"], "set OPENAI_API_KEY"),
        (["extract", "--trait", "evil", "--judge", "gpt"], "unknown judge 'gpt'"),
        (
            ["extract", "--trait", "{tmp}/broken.json", "--judge", "none"],
            "'instructions' has 1 pairs; needs 5",
        ),
        (["extract", "--trait", "evil", "--judge", "none", "--questions", "30"], "between 1 and 20, got 30"),
    ],
)
def test_bad_input(tmp_path, capsys, monkeypatch, argv: list[str], pattern: str) -> None:
    from safetensors.torch import save_file

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if argv[0] == "extract":
        argv = [*argv, "--model", "smollm2", "--out", "{tmp}/run"]
    broken = json.loads((Path(personavec.__file__).parent / "traits/builtin/evil.json").read_text())
    broken["instructions"] = broken["instructions"][:1]
    (tmp_path / "broken.json").write_text(json.dumps(broken))

    good = tmp_path / "good.safetensors"
    save_vectors(good, [PersonaVector("evil", torch.randn(31, 576), layer=20)])
    bad = tmp_path / "bad.safetensors"  # a vector file whose tensor was corrupted to NaN after saving
    header = {
        "format": "personavec/1",
        "personavec": json.dumps(
            {"response-avg": {"trait": "evil", "kind": "response-avg", "layer": 20, "metadata": {}}}
        ),
    }
    save_file({"response-avg": torch.full((31, 576), float("nan"))}, str(bad), metadata=header)
    argv = [a.format(tmp=tmp_path, good=good, bad=bad) for a in argv]
    _one_line_error(capsys, main(argv), pattern)


@pytest.fixture
def tiny_vector(tiny_dir, tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_vectors(path, [PersonaVector("optimistic", torch.randn(N_LAYERS + 1, 64) * 4, layer=2)])
    return path


def test_steer_and_monitor(tiny_dir, tiny_vector, capsys) -> None:
    model = ["--model", str(tiny_dir)]
    assert (
        main(
            [
                "steer",
                *model,
                "--vector",
                f"{tiny_vector}:2.5",
                "--prompt",
                "Hi",
                "--compare",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Q: Hi" in out and "steered: " in out and "unsteered: " in out
    argv = [
        "steer",
        *model,
        "--vector",
        f"{tiny_vector}:2",
        "--prompt",
        "Hi",
        "--prompt",
        "Yo",
        "--guard=-1e9",
    ]
    assert main(argv) == 0
    assert "guard at layer 2: steered 2 of 2 answers" in capsys.readouterr().out
    assert (
        main(["monitor", *model, "--vector", str(tiny_vector), "--prompt", "Hi", "--max-new-tokens", "4"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "at layer 2" in lines[0] and len(lines) == 1 + 4


def test_steered_chat_keeps_the_conversation(tiny_dir, tiny_vector, capsys, monkeypatch) -> None:
    import io

    import personavec.core.generate

    prompts: list[str] = []
    real = personavec.core.generate.generations

    def recording(loaded, batch, *args, **kwargs):
        prompts.extend(batch)
        return real(loaded, batch, *args, **kwargs)

    monkeypatch.setattr(personavec.core.generate, "generations", recording)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n\nHow are you?\nexit\nnot read\n"))
    argv = ["steer", "--model", str(tiny_dir), "--vector", f"{tiny_vector}:1", "--chat"]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant: ") == 2 and len(prompts) == 2  # blank skipped; nothing read after 'exit'
    assert "Hello" in prompts[1] and "How are you?" in prompts[1]  # the second turn carries the first


def test_sweep_calibrate_and_capability(tiny_dir, tiny_vector, tmp_path, capsys) -> None:
    common = [
        "--model",
        str(tiny_dir),
        "--vector",
        str(tiny_vector),
        "--trait",
        "optimistic",
        "--judge",
        "lexicon",
    ]
    sizes = ["--questions", "2", "--max-new-tokens", "3"]
    argv = ["sweep", *common, *sizes, "--out", str(tmp_path / "s"), "--layers", "1,2", "--coefs=-1,0,1"]
    assert main(argv) == 0
    assert len((tmp_path / "s" / "sweep.csv").read_text().splitlines()) == 1 + 5
    assert "offline proxy" in (tmp_path / "s" / "report.html").read_text()
    assert main(["calibrate", *common, *sizes, "--out", str(tmp_path / "c")]) == 0
    assert "graded: r = " in capsys.readouterr().out
    assert len(json.loads((tmp_path / "c" / "calibration.json").read_text())["points"]) == 8 * 2
    argv = [
        "eval",
        "capability",
        "--model",
        str(tiny_dir),
        "--vector",
        f"{tiny_vector}",
        "--coef",
        "3",
        "--compare",
        "--json",
    ]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"unsteered", "steered +3"} and all(r["n"] == 40 for r in results.values())
    assert results["unsteered"]["correct_logprob"] < 0
    assert main(argv[:-1]) == 0
    assert "mean log-probability of the correct letter -" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["eval", "capability", "--data", "{tmp}/nowhere"], "not found"),
        (["eval", "capability", "--data", "{tmp}/bad.csv"], "bad.csv:2"),
        (["steer", "--vector", "{smol}:1", "--prompt", "Hi"], "was made for"),
        (["steer", "--vector", "{vector}:1"], "nothing to answer"),
        (["monitor", "--vector", "{vector}", "--prompt", "Hi", "--layer", "9"], "layer 9"),
        (
            ["sweep", "--vector", "{vector}", "--trait", "evil", "--judge", "lexicon", "--out", "{tmp}/s"],
            "sentiment-like",
        ),
        (
            ["sweep", "--vector", "{vector}", "--trait", "optimistic", "--judge", "none", "--out", "{tmp}/s"],
            "needs a judge",
        ),
        (
            [
                "calibrate",
                "--vector",
                "{vector}",
                "--trait",
                "optimistic",
                "--judge",
                "lexicon",
                "--out",
                "{tmp}/c",
                "--examples-from",
                "{tmp}",
            ],
            "holds no personavec extraction run",
        ),
        (["monitor", "--vector", "{vector}", "--prompt", "Hi", "--max-new-tokens", "0"], "at least 1"),
        # norm units with a vector that records no residual norm: refused before the model loads
        (["steer", "--vector", "{vector}:1", "--prompt", "Hi", "--coef-units", "norm"], NO_NORM),
        (["eval", "capability", "--vector", "{vector}", "--coef-units", "norm"], NO_NORM),
        (
            [
                *("sweep", "--vector", "{vector}", "--trait", "optimistic", "--judge", "lexicon"),
                *("--out", "{tmp}/s", "--coefs=1", "--coef-units", "norm"),
            ],
            NO_NORM,
        ),
        (
            [
                *("train", "{tmp}/d.jsonl", "--out", "{tmp}/t", "--vector", "{vector}"),
                *("--intervention", "steer", "--coef", "1", "--coef-units", "norm"),
            ],
            NO_NORM,
        ),
    ],
)
def test_deployment_bad_input(tiny_dir, tiny_vector, tmp_path, capsys, argv: list[str], pattern: str) -> None:
    smol = tmp_path / "smol.safetensors"
    save_vectors(
        smol, [PersonaVector("evil", torch.randn(31, 576), layer=20, metadata={"model": SMOL.to_dict()})]
    )
    (tmp_path / "bad.csv").write_text("What is 1+1?,1,2,3,4,B\nBroken row,1,2,3\n")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    argv = [a.format(tmp=tmp_path, smol=smol, vector=tiny_vector) for a in argv]
    _one_line_error(capsys, main([*argv, "--model", str(tiny_dir)]), pattern)


@pytest.mark.parametrize("argv", [["--help"], ["traits", "list"], ["extract", "--help"]])
def test_help_and_listing_import_neither_torch_nor_transformers(argv: list[str]) -> None:
    code = (
        "import sys\nfrom personavec.cli import build_parser, main\nbuild_parser()\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED []"


def _extract_args(tmp_path: Path, *extra: str) -> object:
    from personavec.cli import build_parser

    argv = ["extract", "--model", "m", "--trait", "evil", "--judge", "none", "--out", str(tmp_path / "r")]
    return build_parser().parse_args([*argv, *extra])


def test_config_file_json_or_yaml_sets_what_the_command_line_does_not(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("samples: 3\nbatch-size: 4\nlayers: [5, 7]\npairing: per-side\n")
    args = _extract_args(tmp_path, "--config", str(tmp_path / "c.yaml"), "--samples", "10")
    assert (args.samples, args.batch_size, args.layers, args.pairing) == (10, 4, (5, 7), "per-side")
    (tmp_path / "c.json").write_text('{"--seed": 9, "max_new_tokens": 12, "force": true}')
    args = _extract_args(tmp_path, "--config", str(tmp_path / "c.json"))
    assert (args.seed, args.max_new_tokens, args.force, args.samples) == (9, 12, True, 10)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"colour": "red"}', "c.json: unknown setting 'colour'; use the options of `personavec extract`"),
        ('{"pairing": "both"}', "c.json: pairing: 'both' is not one of paired, per-side"),
        ('{"samples": "many"}', "c.json: samples: invalid literal"),
        ('{"force": "yes"}', "c.json: force: expected true or false"),
        ("[1, 2]", "must hold an object"),
        ("{not json", "cannot read the config file"),
    ],
)
def test_config_file_mistakes_are_one_line_errors(tmp_path, capsys, text: str, pattern: str) -> None:
    (tmp_path / "c.json").write_text(text)
    argv = ["extract", "--model", "m", "--trait", "evil", "--judge", "none", "--out", str(tmp_path / "r")]
    _one_line_error(capsys, main([*argv, "--config", str(tmp_path / "c.json")]), pattern)


def test_flags_come_from_the_config_fields() -> None:
    from personavec.cli import build_parser
    from personavec.cli._options import from_args
    from personavec.training.config import TrainConfig, TrainIntervention

    parser = build_parser()
    base = ["train", "d.jsonl", "--model", "m", "--out", "o"]
    args = parser.parse_args([*base, "--full", "--no-rslora", "--lr", "0.5", "--target-module", "q_proj"])
    config = from_args(TrainConfig, args, intervention=from_args(TrainIntervention, args))
    assert (config.lora, config.rslora, config.learning_rate, config.target_modules) == (
        False, False, 0.5, ("q_proj",),
    )  # fmt: skip
    assert from_args(TrainConfig, parser.parse_args(base)) == TrainConfig()  # defaults written once
    train = next(
        a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "rank"
    )
    assert train.default == 32 and train.help == "LoRA rank (default 32)"


def test_sampling_flags_take_each_commands_defaults() -> None:
    from personavec.cli import build_parser
    from personavec.cli._options import from_args
    from personavec.core.sampling import Sampling
    from personavec.data.config import KitConfig, ScreenConfig
    from personavec.deploy.config import SteerConfig
    from personavec.pipeline.config import ExtractConfig, Sizes, SweepGrid

    parser = build_parser()
    extract = _extract_args(Path("."))
    assert (
        from_args(ExtractConfig, extract).sampling
        == ExtractConfig().sampling
        == Sampling(256, 1.0, 1.0, 0, 32)
    )
    sweep = ["sweep", "--model", "m", "--vector", "v", "--trait", "evil", "--judge", "lexicon", "--out", "o"]
    assert from_args(Sizes, parser.parse_args(sweep)) == Sizes()  # greedy, 128 tokens
    given = from_args(Sizes, parser.parse_args([*sweep, "--samples", "2", "--temperature", "0.5"]))
    assert given == Sizes(samples=2, sampling=Sampling(max_new_tokens=128, temperature=0.5, batch_size=32))
    assert from_args(SweepGrid, parser.parse_args(sweep)) == SweepGrid()  # the chosen layer, -2…2
    grid = from_args(SweepGrid, parser.parse_args([*sweep, "--layers", "1,2", "--coefs=-1,1"]))
    assert grid == SweepGrid(layers=(1, 2), coefs=(-1.0, 1.0))
    steer = ["steer", "--model", "m", "--vector", "v:1", "--prompt", "Hi"]
    assert from_args(SteerConfig, parser.parse_args(steer)) == SteerConfig()
    assert from_args(SteerConfig, parser.parse_args([*steer, "--positions", "prompt"])).positions == "prompt"
    kit = ["data", "make-trait-dataset", "--model", "m", "--trait", "evil", "--out", "o"]
    assert from_args(KitConfig, parser.parse_args(kit)) == KitConfig()
    screen = parser.parse_args(["screen", "d.jsonl", "--model", "m", "--vector", "v", "--out", "o"])
    assert not hasattr(screen, "temperature")  # a subset: the own answers are greedy
    assert from_args(ScreenConfig, screen) == ScreenConfig()


def test_a_bad_sampling_flag_is_a_one_line_error(tmp_path, capsys) -> None:
    argv = ["extract", "--model", "m", "--trait", "evil", "--judge", "none", "--out", str(tmp_path / "r")]
    _one_line_error(capsys, main([*argv, "--top-p", "0"]), "--top-p in (0, 1]")


def test_a_library_error_names_fields_and_the_command_line_writes_its_flags() -> None:
    from personavec.cli import build_parser
    from personavec.cli._options import as_flags
    from personavec.errors import ConfigError

    train = build_parser().parse_args(["train", "d.jsonl", "--model", "m", "--out", "o"])
    error = ConfigError("learning_rate and epochs must be positive", ("learning_rate", "epochs"))
    assert as_flags(error, train) == "--lr and --epochs must be positive"  # the field's own flag
    assert as_flags(error, None) == "--learning-rate and --epochs must be positive"
    engine = ConfigError("set model to one of them", {"model": "engine_model"})  # a word for a field
    assert as_flags(engine, None) == "set --engine-model to one of them"
    path = ConfigError("cannot write /tmp/out/x or out.d; choose another out", ("out",))
    assert as_flags(path, None) == "cannot write /tmp/out/x or out.d; choose another --out"


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--vllm-arg", "tensor_parallel_size=2"], "--vllm-arg needs --backend vllm"),
        (["--backend", "vllm", "--engine", "openai:http://127.0.0.1:9/v1"], "--engine and --backend vllm"),
    ],
)
def test_a_second_runtime_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], pattern: str
) -> None:
    argv = [
        "extract",
        "--model",
        "smollm2",
        "--trait",
        "optimistic",
        "--judge",
        "lexicon",
        "--out",
        str(tmp_path),
    ]
    _one_line_error(capsys, main([*argv, *extra]), pattern)
