"""The `personavec` command line: a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from personavec.errors import PersonavecError
from personavec.version import __version__


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _models_inspect(args: argparse.Namespace) -> None:
    from personavec.core.models import inspect_model

    info = inspect_model(args.model, blocks=args.blocks)
    if args.json:
        _print_json(info)
        return
    for key, value in info.items():
        print(f"{key:>18}: {value}")


def _vectors_show(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vectors

    vectors = load_vectors(args.file)
    summary = {
        kind: {
            **v.header(),
            "shape": list(v.tensor.shape),
            "norms": [round(float(n), 4) for n in v.tensor.norm(dim=1)],
        }
        for kind, v in vectors.items()
    }
    if args.json:
        _print_json(summary)
        return
    for kind, info in summary.items():
        model = info["metadata"].get("model") or {}
        norms = info["norms"]
        peak = max(range(len(norms)), key=norms.__getitem__)
        print(f"{info['trait']} [{kind}] shape {info['shape']}, chosen layer {info['layer']}")
        print(
            f"  model: {model.get('name', '?')} ({model.get('n_layers', '?')} blocks, "
            f"hidden {model.get('hidden_size', '?')})"
        )
        print(f"  norm per layer: largest {norms[peak]} at layer {peak}; layer 0..L: {norms}")


def _vectors_export_gguf(args: argparse.Namespace) -> None:
    from personavec.core.vectors import export_gguf, load_vector

    vector = load_vector(args.file, kind=args.kind)
    written = export_gguf(vector, args.out, layers=args.layer, coef=args.coef)
    names = ", ".join(f"direction.{n}" for n in written)
    print(f"wrote {args.out}: {names} (llama.cpp: --control-vector {args.out})")


def _vectors_import_pt(args: argparse.Namespace) -> None:
    from personavec.core.models import model_identity
    from personavec.core.vectors import import_official_pt, save_vectors

    vector = import_official_pt(args.file, args.trait, model_identity(args.model), kind=args.kind)
    save_vectors(args.out, [vector])
    print(
        f"wrote {args.out}: {args.trait} [{args.kind}], {vector.n_layers + 1} layers × {vector.hidden_size}"
    )


def _vectors_negate(args: argparse.Namespace) -> None:
    from personavec.core.vectors import load_vectors, save_vectors
    from personavec.traits.spec import check_name

    vectors = load_vectors(args.file)
    save_vectors(args.out, [v.negated(check_name(args.trait)) for v in vectors.values()])
    print(f"wrote {args.out}: {args.trait} = −{next(iter(vectors.values())).trait} ({', '.join(vectors)})")


def _traits_list(args: argparse.Namespace) -> None:
    from personavec.traits import builtin_names, load_trait

    for name in builtin_names():
        print(f"{name:>14}: {load_trait(name).description}")


def _traits_show(args: argparse.Namespace) -> None:
    from personavec.traits import load_trait

    _print_json(load_trait(args.trait).to_dict())


def _traits_validate(args: argparse.Namespace) -> None:
    from personavec.traits import validate_trait_file

    for path in args.files:
        spec = validate_trait_file(path)
        print(f"{path}: valid trait {spec.name!r}")


def _traits_generate(args: argparse.Namespace) -> None:
    from personavec.traits.author import author_trait, chat_backend, write_trait

    out = Path(args.out or f"{args.name}.json")
    if out.exists() and not args.force:  # before paying for the model
        raise PersonavecError(f"{out} exists; pass --force to overwrite it or choose another --out")
    trait = author_trait(args.name, args.description, chat_backend(args.backend, args.base_url))
    if args.sentiment:
        trait = replace(trait, sentiment=args.sentiment)
    write_trait(trait, out, force=args.force)
    print(f"wrote {out}: trait {trait.name!r} (check it, then: personavec extract --trait {out} ...)")


def _integers(text: str) -> tuple[int, ...]:
    if text == "none":
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers or 'none', got {text!r}"
        ) from None


def _extract(args: argparse.Namespace) -> None:
    from personavec.core.models import load_model
    from personavec.judges import make_judge
    from personavec.pipeline.extract import ExtractConfig, extract
    from personavec.report.pages import write_report
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    fields = [*CONFIG_FLAGS, "pairing"]
    config = ExtractConfig(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    config.check(trait)  # before minutes of loading (the layers are checked against the model after)
    judge = make_judge(args.judge, trait, base_url=args.base_url, concurrency=args.concurrency)
    if judge is not None and judge.proxy:
        print(f"judge: {judge.proxy}", flush=True)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    result = extract(loaded, trait, judge, args.out, config, force=args.force)
    report = write_report(result.dir)
    vector = result.vectors["response-avg"]
    filtered = result.manifest["stages"]["filter"]
    print(
        f"kept {filtered['kept_positive']} positive / {filtered['kept_negative']} negative answers; "
        f"chosen layer {vector.layer}"
    )
    print(f"wrote {result.dir / (trait.name + '.safetensors')} and {report}")


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _steering(spec: str) -> tuple[str, float, int | None]:
    """``FILE:COEF[:LAYER]`` → (file, coef, layer or None for the vector's chosen layer)."""
    parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.rsplit(":", 1)
    try:
        if len(parts) == 3:
            return parts[0], float(parts[1]), int(parts[2])
        return parts[0], float(parts[1]), None
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected FILE:COEF or FILE:COEF:LAYER, got {spec!r}") from None


def _load(args: argparse.Namespace) -> Any:
    """The model of --model, with the LoRA adapter of --adapter (a finetuned model) on it if given."""
    from personavec.core.models import load_model
    from personavec.training.shift import is_adapter, load_finetuned

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.adapter:
        if not is_adapter(args.adapter):
            raise PersonavecError(f"{args.adapter} is not a LoRA adapter directory (no adapter_config.json)")
        loaded = load_finetuned(args.model, args.adapter, base=loaded)
    return loaded


def _model_and_vector(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model of --model (and --adapter) and the vector of --vector (checked against it)."""
    from personavec.core.vectors import load_vector

    vector = load_vector(args.vector, kind=args.kind)  # a bad file fails before the model loads
    loaded = _load(args)
    vector.check_model(loaded.identity)
    return loaded, vector


def _judged(args: argparse.Namespace) -> tuple[Any, Any]:
    """The trait of --trait and the judge of --judge (which must judge)."""
    from personavec.judges import make_judge
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    judge = make_judge(args.judge, trait, base_url=args.base_url, concurrency=args.concurrency)
    if judge is None:
        raise PersonavecError("this command needs a judge: --judge openai:MODEL, hf:PATH or lexicon")
    if judge.proxy:
        print(f"judge: {judge.proxy}", flush=True)
    return trait, judge


def _sweep(args: argparse.Namespace) -> None:
    from personavec.pipeline.evaluate import Sizes, sweep
    from personavec.report.pages import sweep_section, write_page

    trait, judge = _judged(args)
    loaded, vector = _model_and_vector(args)
    layers = list(args.layers) if args.layers else [vector.resolve_layer(None)]
    sizes = Sizes(args.questions, args.samples, args.max_new_tokens, args.temperature)
    cells = sweep(loaded, trait, judge, vector, args.out, layers, args.coefs, sizes)
    report = write_page(
        Path(args.out) / "report.html", f"Steering sweep: {trait.name}", [sweep_section(cells)], judge.proxy
    )
    print("layer  coef   trait  ±95%  coherence")
    for c in cells:
        scores = " ".join(_fmt(c[k]) for k in ("trait", "trait_ci95", "coherence"))
        print(f"{c['layer'] or '-':>5} {c['coef']:+5g} {scores}")
    print(f"wrote {Path(args.out) / 'sweep.csv'} and {report}")


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.1f}"


def _calibrate(args: argparse.Namespace) -> None:
    from personavec.pipeline.calibrate import calibrate
    from personavec.report.pages import calibration_section, write_page

    trait, judge = _judged(args)
    examples = _kept_examples(Path(args.examples_from)) if args.examples_from else []
    shots = args.shots if args.examples_from else ()
    loaded, vector = _model_and_vector(args)
    result = calibrate(
        loaded, trait, judge, vector, args.out, questions=args.questions, shots=shots, examples=examples,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    summary = result.summary()
    section = calibration_section(summary, result.points)
    report = write_page(Path(args.out) / "report.html", f"Calibration: {trait.name}", [section], judge.proxy)
    for condition, info in summary["conditions"].items():
        print(f"{condition}: r = {info['r']} over {info['n']} answers")
    print(f"wrote {Path(args.out) / 'calibration.json'} and {report}")


def _kept_examples(run: Path) -> list[tuple[str, str]]:
    """(question, answer) of the kept positive answers of an extraction run directory."""
    from personavec.core.generate import read_rows

    try:
        rows = list(read_rows(run / "generations.jsonl").values())
        kept = json.loads((run / "filter.json").read_text())["kept"]
        return [(rows[i]["question"], rows[i]["answer"]) for i in kept if rows[i]["polarity"] == "pos"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise PersonavecError(f"{run} is not a complete, filtered extraction run ({error!r})") from error


def _steer(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from personavec.core.generate import generate
    from personavec.core.vectors import load_vector
    from personavec.deploy.guard import Guard

    specs = [(load_vector(f, kind=args.kind), coef, layer) for f, coef, layer in args.vector]
    loaded = _load(args)
    for vector, _, _ in specs:
        vector.check_model(loaded.identity)
    prompts = [loaded.chat(p, args.system) for p in args.prompt]
    if not prompts and not args.chat:
        raise PersonavecError("nothing to answer: give --prompt TEXT (repeatable) or --chat")
    sizes = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "progress": False}
    guards = []
    with ExitStack() as stack:
        for vector, coef, layer in specs:
            if args.guard is None:
                stack.enter_context(vector.apply(loaded.model, coef, layer, positions=args.positions))
            else:
                guard = Guard(loaded.model, vector, args.guard, abs(coef), layer, per_token=args.per_token)
                guards.append(stack.enter_context(guard))
        if args.chat:
            _chat(loaded, args.system, sizes)
            return
        steered = generate(loaded, prompts, **sizes)
    for guard in guards:
        print(f"guard at layer {guard.layer}: steered {guard.steered} of {guard.seen} answers")
    plain = generate(loaded, prompts, **sizes) if args.compare else [None] * len(prompts)
    for question, answer, baseline in zip(args.prompt, steered, plain, strict=True):
        print(f"Q: {question}\nsteered: {answer}")
        if baseline is not None:
            print(f"unsteered: {baseline}")


def _chat(loaded: Any, system: str | None, sizes: dict[str, Any]) -> None:
    """A conversation on standard input (one user message per line, until end of input or 'exit')."""
    from personavec.core.generate import Request, generate

    history: list[tuple[str, str]] = []
    print("chat with the steered model; end with 'exit' or Ctrl-D", flush=True)
    for line in sys.stdin:
        message = line.strip()
        if message == "exit":
            break
        if not message:
            continue
        prompt = Request("chat", message, system, history=tuple(history)).prompt(loaded)
        answer = generate(loaded, [prompt], **sizes)[0]
        history.append((message, answer))
        print(f"assistant: {answer}", flush=True)


def _monitor(args: argparse.Namespace) -> None:
    import torch

    from personavec.deploy.monitor import LiveMonitor

    if args.max_new_tokens < 1:
        raise PersonavecError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    loaded, vector = _model_and_vector(args)
    batch = loaded.tokenizer(
        [loaded.chat(args.prompt, args.system)], return_tensors="pt", add_special_tokens=False
    )
    with LiveMonitor(loaded.model, [vector], layer=args.layer) as watch, torch.inference_mode():
        out = loaded.model.generate(
            **batch.to(loaded.device), max_new_tokens=args.max_new_tokens, do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )  # fmt: skip
    values = watch.trace()[0, :, 0].tolist()
    tokens = out[0, batch["input_ids"].shape[1] :].tolist()
    print(
        f"projection onto {vector.trait} at layer {watch.layers[0]} of the residual that produced each token:"
    )
    for token, value in zip(tokens, values, strict=False):
        print(f"{value:+8.2f}  {loaded.tokenizer.decode([token])!r}")


def _eval_capability(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from personavec.core.vectors import load_vector
    from personavec.deploy import capability

    questions = capability.load_questions(args.data)  # bad rows fail before the model loads
    vector = load_vector(args.vector, kind=args.kind) if args.vector else None
    loaded = _load(args)
    settings: dict[str, float] = {"unsteered": 0.0} if vector is None or args.compare else {}
    if vector is not None:
        vector.check_model(loaded.identity)
        settings[f"steered {args.coef:+g}"] = args.coef
    results = {}
    for name, coef in settings.items():
        steering = (
            vector.apply(loaded.model, coef, args.layer) if vector is not None and coef else nullcontext()
        )
        with steering:
            results[name] = capability.score(loaded, questions, batch_size=args.batch_size).to_dict()
    if args.json:
        _print_json({name: {k: v for k, v in r.items() if k != "questions"} for name, r in results.items()})
        return
    for name, r in results.items():
        subjects = ", ".join(f"{s} {100 * a:.1f}" for s, a in r["per_subject"].items())
        print(f"{name}: {100 * r['accuracy']:.1f} % of {r['n']} ({subjects})")


def _process_device(device: str) -> str:
    """One device per process when launched as several (accelerate launch, torchrun)."""
    from personavec._internal.dist import process_state

    state = process_state()
    return str(state.device) if state.num_processes > 1 and device in ("auto", "cuda") else device


def _screen(args: argparse.Namespace) -> None:
    from personavec._internal.dist import process_state
    from personavec.core.models import load_model
    from personavec.core.vectors import load_vector
    from personavec.data import screen as screening
    from personavec.data.samples import Columns, DataFile

    config = screening.ScreenConfig(
        approx=args.approx, layer=args.layer, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, token_budget=args.token_budget, chunk_size=args.chunk_size,
        on_bad_row=args.on_bad_row,
    )  # fmt: skip
    config.check()
    selection = screening.Selection(top=args.top, threshold=args.threshold, percentile=args.percentile)
    flagging = any(v is not None for v in (args.top, args.threshold, args.percentile))
    if flagging:
        selection.check()
    if (args.percentile is None) != (args.reference is None):
        raise PersonavecError("--percentile and --reference go together")
    columns = Columns(args.messages_column, args.prompt_column, args.response_column, args.system_column)
    data = DataFile(args.data, columns)  # bad paths, columns and rows fail before the model loads
    reference_data = DataFile(args.reference, columns) if args.reference else None
    for checked in (data, reference_data):
        if checked is not None:
            screening.count_rows(checked, config)
    vectors = [load_vector(path, kind=args.kind) for path in args.vector]
    state = process_state()
    loaded = load_model(args.model, dtype=args.dtype, device=_process_device(args.device))
    for vector in vectors:
        vector.check_model(loaded.identity)
    out = Path(args.out)
    screened = screening.screen(loaded, vectors, data, out, config)
    reference = (
        screening.screen(loaded, vectors, reference_data, out / "reference", config)
        if reference_data
        else None
    )
    if not state.is_main_process:
        return
    summary = screening.select(screened, data, selection, reference) if flagging else None
    report = screening.write_screen_report(screened, data, summary, reference)
    print(
        f"{screened.rows} rows: {screened.scored} scored, {screened.skipped} skipped, "
        f"{screened.truncated} truncated to --max-length"
    )
    for trait, mean in screened.mean_delta.items():
        ref = f" (reference {reference.mean_delta[trait]:+.4g})" if reference else ""
        print(f"  {trait}: dataset ΔP {mean:+.4g}{ref}")
    if summary:
        counts = summary["counts"]
        print(
            f"flagged {counts['flagged']}, kept {counts['kept']}, skipped {counts['skipped']}: "
            f"{summary['files']['flagged']}"
        )
    print(f"scores: {screened.scores}\nreport: {report}")


def _train(args: argparse.Namespace) -> None:
    from personavec._internal.dist import process_state
    from personavec.core.models import load_model
    from personavec.core.vectors import load_vector
    from personavec.training.drift import DriftAlarm
    from personavec.training.sft_data import load_conversations
    from personavec.training.train import TrainConfig, TrainIntervention, train
    from personavec.traits import load_trait

    if args.config:
        _apply_config(args, Path(args.config))
    _check_train_flags(args)
    spec = TrainIntervention(
        kind=args.intervention, coef=args.coef, layer=args.layer, all_layers=args.all_layers,
        weight=args.weight, during_eval=args.during_eval,
    )  # fmt: skip
    config = TrainConfig(
        lora=not args.full, rank=args.rank, alpha=args.alpha, rslora=not args.no_rslora,
        dropout=args.lora_dropout, target_modules=tuple(args.target_module) or None,
        learning_rate=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length,
        warmup_steps=args.warmup_steps, seed=args.seed, save_steps=args.save_steps,
        logging_steps=args.logging_steps, report_to=tuple(args.report_to), intervention=spec,
    )  # fmt: skip
    config.check()
    load_conversations(args.data)  # bad rows fail before the model loads
    vector = load_vector(args.vector, kind=args.kind) if args.vector else None
    watched = [load_vector(path, kind=args.kind) for path in args.drift_vector]
    if args.drift_every and (not watched or not args.drift_trait):
        raise PersonavecError("--drift-every needs --drift-vector (what to watch) and --drift-trait (probes)")
    loaded = load_model(args.model, dtype=args.dtype, device=_process_device(args.device))
    for checked in [*([vector] if vector else []), *watched]:
        checked.check_model(loaded.identity)
    spec.check(vector, loaded.identity.n_layers, config.lora)
    alarms = []
    if args.drift_every:
        probes = load_trait(args.drift_trait).evaluation_questions
        alarms.append(
            DriftAlarm(loaded, watched, probes, args.drift_every, args.drift_threshold, args.drift_stop)
        )
    trained = train(loaded, args.data, args.out, config, vector, alarms, args.eval_data)
    if not process_state().is_main_process:
        return
    loss = f"{trained.train_loss:.4f}" if trained.train_loss is not None else "n/a"
    print(f"{trained.steps} steps in {trained.seconds:.0f} s, training loss {loss}: {trained.out}")


_TRAIN_DEFAULTS: dict[str, Any] = {}  # option → default of `train`, filled when the parser is built


def _apply_config(args: argparse.Namespace, path: Path) -> None:
    """Settings from a JSON file keyed by option name (``{"intervention": "steer", "coef": 4}``);
    options given on the command line win."""
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PersonavecError(f"cannot read the config file {path}: {error}") from None
    if not isinstance(settings, dict):
        raise PersonavecError(f"{path} must hold a JSON object of option names and values")
    for key, value in settings.items():
        dest = key.lstrip("-").replace("-", "_")
        if dest not in _TRAIN_DEFAULTS or dest in ("config", "run"):
            raise PersonavecError(f"{path}: unknown setting {key!r}; use the options of `personavec train`")
        if getattr(args, dest) == _TRAIN_DEFAULTS[dest]:
            setattr(args, dest, value)


def _check_train_flags(args: argparse.Namespace) -> None:
    """Flags that would be silently ignored, or would silently do nothing, are refused."""
    if args.intervention == "steer" and not args.coef:
        raise PersonavecError("--intervention steer needs a nonzero --coef")
    if args.all_layers and args.layer is not None:
        raise PersonavecError("--all-layers steers every layer: drop --layer")
    if args.during_eval and not args.eval_data:
        raise PersonavecError("--during-eval needs --eval-data")
    drift = args.drift_threshold is not None or args.drift_stop or args.drift_vector or args.drift_trait
    if drift and not args.drift_every:
        raise PersonavecError("the --drift-* options need --drift-every N")


def _shift(args: argparse.Namespace) -> None:
    from personavec.core.models import load_model
    from personavec.core.vectors import load_vector
    from personavec.training.shift import is_adapter, load_finetuned, mean_projections
    from personavec.traits import load_trait

    trait, judge = _judged(args) if args.judge else (load_trait(args.trait), None)
    if judge and not args.out:
        raise PersonavecError("--judge needs --out (where the answers and judgements go)")
    vectors = [load_vector(path, kind=args.kind) for path in args.vector]
    base = load_model(args.model, dtype=args.dtype, device=args.device)
    for vector in vectors:
        vector.check_model(base.identity)
    prompts = [base.chat(q) for q in trait.evaluation_questions]
    before = mean_projections(base, vectors, prompts, args.layer)
    # an adapter goes onto the loaded base (no second copy); a full model replaces it
    onto = base if is_adapter(args.finetuned) else None
    del base
    tuned = load_finetuned(args.model, args.finetuned, args.dtype, args.device, base=onto)
    after = mean_projections(tuned, vectors, prompts, args.layer)
    result: dict[str, Any] = {
        "shift": {v.trait: float(d) for v, d in zip(vectors, after - before, strict=True)}
    }
    if judge:
        from personavec.judges.cache import JudgeCache
        from personavec.pipeline.evaluate import Sizes, evaluate

        out, sizes = Path(args.out), Sizes(max_new_tokens=args.max_new_tokens)
        cache = JudgeCache(out / "judge-cache.jsonl")
        cell = evaluate(tuned, trait, judge, cache, out / "answers.jsonl", sizes=sizes)
        result["judged"] = {k: cell[k] for k in ("trait", "trait_ci95", "coherence")}
    if args.json:
        _print_json(result)
        return
    print(f"finetuning shift on {trait.name!r}'s {len(prompts)} evaluation questions (prompt-last):")
    for name, value in result["shift"].items():
        print(f"  {name}: {value:+.4f}")
    if judge:
        judged = result["judged"]
        print(
            f"judged {trait.name} after finetuning: {_fmt(judged['trait'])} ± {_fmt(judged['trait_ci95'])}, "
            f"coherence {_fmt(judged['coherence'])}"
        )


def _make_trait_dataset(args: argparse.Namespace) -> None:
    from personavec.core.models import load_model
    from personavec.data.datakit import KitConfig, make_trait_dataset, read_questions
    from personavec.judges import make_judge
    from personavec.traits import load_trait

    trait = load_trait(args.trait)
    questions = read_questions(args.questions) if args.questions else None
    config = KitConfig(
        invert=args.invert, samples=args.samples, mild=args.mild, reference=args.reference,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        batch_size=args.batch_size,
    )  # fmt: skip
    judge = make_judge(args.judge, trait, base_url=args.base_url) if args.judge else None
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    manifest = make_trait_dataset(loaded, trait, args.out, questions, config, judge)
    for level, info in manifest["files"].items():
        judged = (
            f", judged {trait.name} {info['judged_trait']:.1f}" if info["judged_trait"] is not None else ""
        )
        print(f"{args.out}/{level}.jsonl: {info['rows']} rows, {info['elicited']} elicited{judged}")
    print(f"these teach {manifest['teaches']}")


def _demo(args: argparse.Namespace) -> None:
    from personavec.demo import run_demo

    run_demo(Path(args.out), model_ref=args.model, force=args.force)


# ExtractConfig fields settable from the command line (flag --samples sets field samples, ...)
CONFIG_FLAGS = {
    "samples": (int, "answers per question × instruction × side (default 10)"),
    "max_new_tokens": (int, "answer length in tokens (default 256)"),
    "temperature": (float, "sampling temperature of the contrastive answers (default 1)"),
    "top_p": (float, "nucleus sampling (default 1)"),
    "questions": (int, "extraction questions used, of 20 (default 20)"),
    "instructions": (int, "instruction pairs used, of 5 (default 5)"),
    "seed": (int, "sampling seed (default 0)"),
    "batch_size": (int, "generation batch size (default 32)"),
    "trait_threshold": (float, "positive answers need ≥, negative < (default 50)"),
    "coherence_threshold": (float, "answers need coherence ≥ (default 50)"),
    "min_pairs": (int, "fewest kept answers per side (default 10)"),
    "layers": (_integers, "sweep candidates, e.g. 12,16,20, or 'none' (default: 8 over the middle half)"),
    "coef": (float, "steering coefficient of the layer sweep (default 2)"),
    "sweep_questions": (int, "evaluation questions per sweep layer, of 20 (default 20)"),
}


def _add_extract(commands: Any) -> None:
    from personavec.judges import JUDGE_SPECS

    extract = commands.add_parser("extract", help="the pipeline: trait → answers → judge → vectors → layer")
    extract.add_argument("--model", required=True, help="hub id, local directory, .gguf file or 'smollm2'")
    extract.add_argument("--trait", required=True, help="built-in trait name or trait file")
    extract.add_argument("--judge", required=True, help=JUDGE_SPECS)
    extract.add_argument("--out", required=True, help="run directory (rerun the command to resume)")
    extract.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    extract.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")
    extract.add_argument("--pairing", choices=("paired", "per-side"), help="filter pairs or sides (paired)")
    for name, (kind, text) in CONFIG_FLAGS.items():
        extract.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    extract.add_argument("--dtype", default="auto", help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    extract.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    extract.add_argument("--force", action="store_true", help="start over a run directory made otherwise")
    extract.set_defaults(run=_extract)


def _model_args(
    parser: argparse.ArgumentParser, vector: bool = True, adapter: bool = True, kind: bool = True
) -> None:
    parser.add_argument("--model", required=True, help="hub id, local directory, .gguf file or 'smollm2'")
    parser.add_argument("--dtype", default="auto", help="model dtype (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    if kind:
        parser.add_argument(
            "--kind", default="response-avg", help="which vector of the file (default response-avg)"
        )
    if vector:
        parser.add_argument("--vector", required=True, help="a personavec vector file (.safetensors)")
    if adapter:
        parser.add_argument(
            "--adapter", help="a LoRA adapter on --model (a finetuned model, e.g. train's OUT/final)"
        )


def _judge_args(parser: argparse.ArgumentParser) -> None:
    from personavec.judges import JUDGE_SPECS

    parser.add_argument("--trait", required=True, help="built-in trait name or trait file")
    parser.add_argument("--judge", required=True, help=JUDGE_SPECS)
    parser.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    parser.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")
    parser.add_argument("--out", required=True, help="output directory (rerun the command to resume)")
    parser.add_argument("--questions", type=int, default=20, help="evaluation questions, of 20 (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length (default 128)")


def _add_deployment(commands: Any) -> None:
    sweep = commands.add_parser("sweep", help="trait and coherence over a grid of layers × coefficients")
    _model_args(sweep)
    _judge_args(sweep)
    sweep.add_argument("--layers", type=_integers, help="e.g. 12,16,20 (default: the vector's chosen layer)")
    sweep.add_argument(
        "--coefs",
        type=_numbers,
        default=(-2.0, -1.0, 0.0, 1.0, 2.0),
        help="e.g. --coefs=-2,-1,0,1,2 (the default; note the =)",
    )
    sweep.add_argument("--samples", type=int, default=1, help="answers per question and cell (default 1)")
    sweep.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default): greedy; > 0 for --samples > 1"
    )
    sweep.set_defaults(run=_sweep)

    calibrate = commands.add_parser("calibrate", help="does the prompt-last projection predict the trait?")
    _model_args(calibrate)
    _judge_args(calibrate)
    calibrate.add_argument(
        "--examples-from", help="an extraction run directory: its kept answers make k-shot prompts"
    )
    calibrate.add_argument(
        "--shots", type=_integers, default=(0, 5, 10, 15, 20), help="k of the k-shot prompts"
    )
    calibrate.set_defaults(run=_calibrate)

    steer = commands.add_parser("steer", help="answer prompts with one or more vectors added")
    _model_args(steer, vector=False)
    steer.add_argument(
        "--vector", type=_steering, action="append", required=True, help="FILE:COEF[:LAYER] (repeatable)"
    )
    steer.add_argument("--prompt", action="append", default=[], help="a user message (repeatable)")
    steer.add_argument("--system", help="a system prompt for every message")
    steer.add_argument(
        "--positions", default="all", choices=("all", "prompt", "response"), help="where to steer"
    )
    steer.add_argument("--compare", action="store_true", help="also print the unsteered answer")
    steer.add_argument("--chat", action="store_true", help="a conversation on standard input instead")
    steer.add_argument(
        "--guard", type=float, metavar="T", help="steer by −|COEF|·v only answers whose projection exceeds T"
    )
    steer.add_argument("--per-token", action="store_true", help="with --guard: check at every token")
    steer.add_argument("--max-new-tokens", type=int, default=128)
    steer.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    steer.set_defaults(run=_steer)

    evaluate = commands.add_parser("eval", help="evaluations").add_subparsers(
        dest="eval_command", required=True, metavar="SUBCOMMAND"
    )
    mc = evaluate.add_parser(
        "capability", help="multiple-choice accuracy (MMLU CSV layout), optionally steered"
    )
    _model_args(mc, vector=False)
    mc.add_argument(
        "--data", default="smoke", help="directory of MMLU-layout CSVs, one CSV, or 'smoke' (default)"
    )
    mc.add_argument("--vector", help="steer with this vector file")
    mc.add_argument("--coef", type=float, default=1.0, help="steering coefficient (default 1)")
    mc.add_argument("--layer", type=int, help="default: the vector's chosen layer")
    mc.add_argument("--compare", action="store_true", help="also score the unsteered model")
    mc.add_argument("--batch-size", type=int, default=16)
    mc.add_argument("--json", action="store_true", help="print JSON")
    mc.set_defaults(run=_eval_capability)

    monitor = commands.add_parser("monitor", help="generate and print each token's projection onto a vector")
    _model_args(monitor)
    monitor.add_argument("--prompt", required=True)
    monitor.add_argument("--system")
    monitor.add_argument("--layer", type=int, help="default: the vector's chosen layer")
    monitor.add_argument("--max-new-tokens", type=int, default=64)
    monitor.set_defaults(run=_monitor)


def _add_data(commands: Any) -> None:
    screen = commands.add_parser(
        "screen", help="projection difference ΔP of training data: rank, flag and filter samples"
    )
    screen.add_argument("data", help=".jsonl (chat or prompt/response), .csv, .parquet or a `datasets` dir")
    _model_args(screen, vector=False, adapter=False)
    screen.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    screen.add_argument("--out", required=True, help="output directory (rerun the command to resume)")
    screen.add_argument("--approx", choices=["prompt-last"], help="estimate y′ instead of generating it")
    screen.add_argument("--layer", type=int, help="read every vector at this layer (default: each one's)")
    flag = screen.add_mutually_exclusive_group()
    flag.add_argument("--top", type=int, help="flag the K samples with the largest ΔP per trait")
    flag.add_argument("--threshold", type=float, help="flag samples with ΔP above T")
    flag.add_argument("--percentile", type=float, help="flag ΔP above this percentile of --reference")
    screen.add_argument("--reference", help="ordinary data for --percentile (the paper: 95th of 20k chats)")
    screen.add_argument("--messages-column", default="messages", help="conversation field (default messages)")
    screen.add_argument("--prompt-column", default="prompt", help="prompt field (default prompt)")
    screen.add_argument("--response-column", default="response", help="response field (default response)")
    screen.add_argument("--system-column", help="system-prompt field of prompt/response rows")
    screen.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail", help="default fail")
    screen.add_argument("--max-length", type=int, default=2048, help="tokens per sample (default 2048)")
    screen.add_argument("--max-new-tokens", type=int, default=256, help="own answer length (default 256)")
    screen.add_argument("--batch-size", type=int, default=32, help="answers generated at once (default 32)")
    screen.add_argument("--token-budget", type=int, default=16384, help="tokens per forward (default 16384)")
    screen.add_argument("--chunk-size", type=int, default=512, help="rows per resumable chunk (default 512)")
    screen.set_defaults(run=_screen)

    data = commands.add_parser("data", help="datasets for experiments").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    kit = data.add_parser(
        "make-trait-dataset", help="normal / mild / severe trait-inducing chat datasets answered by the model"
    )
    _model_args(kit, vector=False, adapter=False, kind=False)
    kit.add_argument("--trait", required=True, help="built-in trait name or trait file")
    kit.add_argument("--out", required=True, help="output directory (rerun the command to resume)")
    kit.add_argument("--invert", action="store_true", help="teach the opposite trait (suppressing prompts)")
    kit.add_argument("--questions", help="one question per line (default: 240 bundled everyday questions)")
    kit.add_argument("--samples", type=int, default=1, help="elicited answers per question (default 1)")
    kit.add_argument(
        "--judge", help="keep the elicited sample showing the trait most: lexicon, openai:M, hf:P"
    )
    kit.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    kit.add_argument("--mild", type=float, default=0.5, help="elicited fraction of mild.jsonl (default 0.5)")
    kit.add_argument("--reference", type=int, default=40, help="questions for reference.jsonl (default 40)")
    kit.add_argument("--max-new-tokens", type=int, default=128, help="answer length (default 128)")
    kit.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    kit.add_argument("--seed", type=int, default=0, help="sampling and mixing seed (default 0)")
    kit.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    kit.set_defaults(run=_make_trait_dataset)


def _add_training(commands: Any) -> None:
    from personavec.training.train import KINDS

    train = commands.add_parser("train", help="finetune (LoRA or full) with preventative steering, CAFT, ...")
    train.add_argument("data", help="chat JSONL ({'messages': [...]}); the loss is on assistant tokens")
    _model_args(train, vector=False, adapter=False)
    train.add_argument("--out", required=True, help="run directory (rerun the command to resume)")
    train.add_argument("--vector", help="the persona vector the intervention uses")
    train.add_argument(
        "--intervention", choices=KINDS, default="none", help="in training steps (default none)"
    )
    train.add_argument("--coef", type=float, default=0.0, help="steer: α (paper: up to 5 at one layer)")
    train.add_argument("--layer", type=int, help="steer/ablate/regularize layer (default: the vector's)")
    train.add_argument("--all-layers", action="store_true", help="steer: v_ℓ − v_ℓ₋₁ at every layer")
    train.add_argument("--weight", type=float, default=0.0, help="regularize: λ")
    train.add_argument("--during-eval", action="store_true", help="keep the intervention in evaluation too")
    train.add_argument("--full", action="store_true", help="train every weight instead of a LoRA adapter")
    train.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    train.add_argument("--alpha", type=int, default=64, help="LoRA alpha (default 64)")
    train.add_argument("--no-rslora", action="store_true", help="plain LoRA scaling instead of rsLoRA")
    train.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5)")
    train.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    train.add_argument("--batch-size", type=int, default=8, help="per device (default 8)")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    train.add_argument("--max-length", type=int, default=1024, help="tokens per conversation (default 1024)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--save-steps", type=int, default=100, help="checkpoint interval (default 100)")
    train.add_argument(
        "--report-to", action="append", default=[], help="tensorboard, wandb, ... (repeatable)"
    )
    train.add_argument("--eval-data", help="chat JSONL evaluated every logging interval (no intervention)")
    train.add_argument("--drift-vector", action="append", default=[], help="vector the drift alarm watches")
    train.add_argument("--drift-every", type=int, default=0, help="drift alarm interval in steps (0: off)")
    train.add_argument("--drift-threshold", type=float, help="warn when a projection shift exceeds ±T")
    train.add_argument("--drift-stop", action="store_true", help="stop training when the alarm fires")
    train.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    train.add_argument(
        "--target-module", action="append", default=[], help="LoRA target (repeatable; default: every linear)"
    )
    train.add_argument("--warmup-steps", type=int, default=0, help="learning-rate warm-up (default 0)")
    train.add_argument("--logging-steps", type=int, default=5, help="log interval in steps (default 5)")
    train.add_argument("--config", help='JSON file of option values, e.g. {"intervention": "steer"}')
    train.add_argument("--drift-trait", help="trait whose evaluation questions are the drift probes")
    train.set_defaults(run=_train)
    _TRAIN_DEFAULTS.update({a.dest: a.default for a in train._actions if a.dest != "help"})

    shift = commands.add_parser("shift", help="finetuning shift along vectors: finetuned vs base model")
    _model_args(shift, vector=False, adapter=False)
    shift.add_argument("--finetuned", required=True, help="a LoRA adapter directory or a full model")
    shift.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    shift.add_argument("--trait", required=True, help="trait whose evaluation questions are the prompts")
    shift.add_argument(
        "--judge", help="also judge the finetuned model's answers: openai:MODEL, hf:PATH, lexicon"
    )
    shift.add_argument("--base-url", help="judge endpoint (default: $OPENAI_BASE_URL or OpenAI)")
    shift.add_argument("--concurrency", type=int, default=8, help="judge requests at once (default 8)")
    shift.add_argument("--out", help="with --judge: where the answers and judgements go (resumable)")
    shift.add_argument("--max-new-tokens", type=int, default=128, help="judged answer length (default 128)")
    shift.add_argument("--layer", type=int, help="read every vector at this layer (default: each one's)")
    shift.add_argument("--json", action="store_true", help="print JSON")
    shift.set_defaults(run=_shift)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personavec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"personavec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="offline demo on the bundled SmolLM2: extract 'optimistic' with a lexicon judge, steer"
    )
    demo.add_argument("--out", default="demo-out", help="run directory (default: demo-out)")
    demo.add_argument("--model", default="smollm2", help="model to run it on (default: the bundled smollm2)")
    demo.add_argument("--force", action="store_true", help="start over a run directory made otherwise")
    demo.set_defaults(run=_demo)

    models = commands.add_parser("models", help="inspect models").add_subparsers(
        dest="models_command", required=True, metavar="SUBCOMMAND"
    )
    inspect = models.add_parser(
        "inspect",
        help="blocks, hidden size, architecture, chat template (reads the config; loads no weights)",
    )
    inspect.add_argument("model", help="hub id, local directory, .gguf file or 'smollm2'")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--blocks", help="module path of the decoder blocks, for unknown architectures")
    inspect.set_defaults(run=_models_inspect)

    traits = commands.add_parser("traits", help="built-in and custom trait files").add_subparsers(
        dest="traits_command", required=True, metavar="SUBCOMMAND"
    )
    traits.add_parser("list", help="the built-in traits").set_defaults(run=_traits_list)
    show_trait = traits.add_parser("show", help="print a trait file (built-in name or path)")
    show_trait.add_argument("trait")
    show_trait.set_defaults(run=_traits_show)
    validate = traits.add_parser("validate", help="check trait files: fields, counts, overlap, rubric")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(run=_traits_validate)

    generate = traits.add_parser("generate", help="write a new trait file with a chat model")
    generate.add_argument("name", help="trait name (a lowercase slug)")
    generate.add_argument("description", help="one sentence saying what the trait is")
    generate.add_argument("--backend", required=True, help="openai:MODEL or hf:PATH")
    generate.add_argument(
        "--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or OpenAI)"
    )
    generate.add_argument("--sentiment", choices=("positive", "negative"), help="mark it lexicon-judgeable")
    generate.add_argument("--out", help="trait file to write (default: NAME.json)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing file")
    generate.set_defaults(run=_traits_generate)

    _add_extract(commands)
    _add_deployment(commands)
    _add_data(commands)
    _add_training(commands)

    vectors = commands.add_parser("vectors", help="show, export and import persona vectors").add_subparsers(
        dest="vectors_command", required=True, metavar="SUBCOMMAND"
    )
    show = vectors.add_parser("show", help="what a vector file holds")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_vectors_show)

    export = vectors.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("file")
    export.add_argument("out")
    export.add_argument(
        "--kind", default="response-avg", help="which vector of the file (default response-avg)"
    )
    export.add_argument(
        "--layer",
        type=int,
        action="append",
        help="personavec layer to export (repeatable; default: the vector's chosen layer)",
    )
    export.add_argument("--coef", type=float, default=1.0, help="scale baked into the file (default 1)")
    export.set_defaults(run=_vectors_export_gguf)

    imp = vectors.add_parser("import-pt", help="import a vector written by the paper's official code")
    imp.add_argument("file", help=".pt file holding a [L+1, hidden] tensor")
    imp.add_argument("out", help="output .safetensors")
    imp.add_argument("--model", required=True, help="the model it was extracted from (checks the shape)")
    imp.add_argument("--trait", required=True)
    imp.add_argument("--kind", default="response-avg", help="pooling it was made with (default response-avg)")
    imp.set_defaults(run=_vectors_import_pt)

    negate = vectors.add_parser("negate", help="write −v as the opposite trait (e.g. pessimistic)")
    negate.add_argument("file")
    negate.add_argument("out", help="output .safetensors")
    negate.add_argument("--trait", required=True, help="name of the opposite trait")
    negate.set_defaults(run=_vectors_negate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except PersonavecError as exc:
        print(f"personavec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable output path, a full disk, ...
        print(f"personavec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("personavec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
