"""``gfnlm`` command line: ``train``, ``eval``, ``sample``, ``export`` and ``serve``.

Commands::

    gfnlm train CONFIG [key=value ...]
        e.g. gfnlm train configs/powerflow_reasoning.yaml train.steps=20
    gfnlm sweep SPEC [key=value ...] [--out DIR] [--dry-run] [--metric M]
        e.g. gfnlm sweep configs/sweeps/objectives.yaml train.steps=4
    gfnlm eval [--run RUN_DIR] [--task math] [--prompts FILE] [--samples N] [--k K]
        [--json OUT.json]
    gfnlm eval --metrics creative --prompts creative_eval [--run RUN_DIR]
        [--target-alpha 0.75 ...] [--json OUT.json]
    gfnlm sample RUN_DIR --prompt "What is the capital of France?" [-n 4]
    gfnlm export RUN_DIR [--step N] (--merged OUT_DIR | --adapter OUT_DIR)
        [--dtype bfloat16] [--force]
    gfnlm serve [MODEL_DIR] [--engine sglang|vllm] [--cpu] [--python PYTHON] [--port P]
        [--env K=V] [-- SERVER_FLAGS ...]
"""

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from gfnlm.contracts.errors import (
    ConfigError,
    GfnlmError,
    InputError,
    Terminated,
    quoted,
    raise_on_sigterm,
)
from gfnlm.contracts.paths import check_output_file, check_path_length, write_text_atomically
from gfnlm.contracts.registry import import_components
from gfnlm.contracts.validators import MAX_COUNT
from gfnlm.samplers.base import FLAG_NAMES, check_sampling_settings
from gfnlm.training.config import RunConfig, load_config


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_eval_table(
    columns: dict[str, dict[str, float]], k: int | Sequence[int] | None = None
) -> str:
    """Rows of metrics, one column per evaluated model (e.g. before / after). ``k``: the k (or
    several) whose pass@k and maj@k rows to show (``pass_at_{k}``, ``majority_at_{k}``); without
    it, the ``pass_at_k`` and ``majority_at_k`` rows. A metric a column lacks (an evaluation
    cached by an older version) or that is NaN shows as "–"."""
    ks = [k] if isinstance(k, int) else list(k or ())
    at_k = [("pass_at_k", "pass@k", True), ("majority_at_k", "majority@k", True)]
    if ks:
        at_k = [(f"pass_at_{x}", f"pass@{x}", True) for x in ks]
        at_k += [(f"majority_at_{x}", f"majority@{x}", True) for x in ks]
    metrics = [
        ("accuracy_t1", "accuracy at T=1 (avg@k)", True),
        ("greedy_accuracy", "greedy accuracy", True),
        *at_k,
        ("format_ok_rate", "format ok at T=1", True),
        ("truncated_rate", "truncated at T=1 (no EOS)", True),
        ("mean_length", "mean length at T=1 (tokens)", False),
        ("greedy_mean_length", "mean length greedy (tokens)", False),
    ]

    def cell(value: float | None, percent: bool) -> str:
        if value is None or math.isnan(value):
            return "–"
        return f"{100 * value:.1f}%" if percent else f"{value:.1f}"

    rows = [("metric", *columns)]
    for key, label, percent in metrics:
        rows.append((label, *(cell(c.get(key), percent) for c in columns.values())))
    return _table(rows)


def cmd_train(args: argparse.Namespace) -> int:
    """``gfnlm train``: load the config, train (or resume), print the before/after table."""
    from gfnlm.models.loading import loading_bars
    from gfnlm.training.trainer import Trainer

    config = load_config(args.config, args.overrides)
    args.out_dir = config.train.out_dir  # main's message on Ctrl-C says whether a checkpoint exists
    import_components(args.imports)  # named as --import in errors; the trainer finds them imported
    config.imports = [*config.imports, *args.imports]
    with loading_bars(not args.quiet):  # transformers' weight-loading bars too
        trainer = Trainer(config, progress=not args.quiet)
    try:
        results = trainer.train()
    finally:
        trainer.close()
    if not trainer.world.is_main:
        return 0
    out = Path(config.train.out_dir)
    if results.get("after") is not None:
        k = config.train.eval_samples
        print(
            f"\nHeld-out evaluation ({results['after']['num_questions']:.0f} questions, "
            f"k={k} samples at T=1):"
        )
        print(format_eval_table({"before": results["before"], "after": results["after"]}))
    print(f"\nCheckpoints: {out / 'checkpoints'}")
    print(f"TensorBoard logs: {out / 'tb'}   (view with: tensorboard --logdir {out / 'tb'})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``gfnlm sweep``: every run of a spec's grid, one after another (resumable), then one
    comparison table and one plot (``gfnlm.training.sweep``)."""
    from gfnlm.training.sweep import sweep

    progress = not args.quiet
    return sweep(args.spec, args.overrides, args.out, args.dry_run, args.metric, progress)


def _check_count(flag: str, value: int, minimum: int, maximum: int = MAX_COUNT) -> None:
    """A count flag in ``[minimum, maximum]``: an absurd value fails here, not in an allocation."""
    if value < minimum:
        raise ConfigError(f"{flag}={value}: must be >= {minimum}")
    if value > maximum:
        raise ConfigError(f"{flag}={value}: must be <= {maximum:_}")


def _check_sampling_flags(args: argparse.Namespace) -> None:
    """The flags ``eval`` and ``sample`` share, checked before any model loads."""
    check_sampling_settings(args.temperature, args.top_p, args.min_p, FLAG_NAMES)
    _check_count("--max-new-tokens", args.max_new_tokens, 0)
    from gfnlm.models.loading import resolve_device

    # cuda without a GPU fails here, before anything loads
    resolve_device(args.device, field="--device")
    check_path_length(args.model, "--model")
    if args.run is not None:
        check_path_length(args.run, "--run")
        if not Path(args.run).is_dir():
            raise ConfigError(f"--run={quoted(args.run)}: no such run directory")


class _RunCheckpoint:
    """A run directory's newest complete checkpoint and its config, found before any model loads."""

    def __init__(self, run: str) -> None:
        from gfnlm.training import checkpoint

        opened = checkpoint.open_run(run, field="--run")
        if opened.note:
            print(f"gfnlm: {opened.note}", file=sys.stderr, flush=True)
        self.config = load_config(opened.config_file)
        self.weights = opened.policy_state


def _run_and_config(args: argparse.Namespace) -> tuple["_RunCheckpoint | None", RunConfig]:
    """The run's checkpoint and config (``--run``), or the config of the plain base model
    (``--model``)."""
    if args.run is not None:
        saved = _RunCheckpoint(args.run)
        return saved, saved.config
    config = RunConfig()
    config.model.path = args.model
    config.model.lora = False
    return None, config


def _tokenizer_for(config: RunConfig):
    """The model folder and its tokenizer, cheap beside the weights: prompts are formatted,
    tokenised and checked against the model's context with them before the model loads."""
    from gfnlm.models.loading import load_tokenizer, resolve_model_path

    model_dir = resolve_model_path(config.model.path)
    return model_dir, load_tokenizer(model_dir)


def _new_tokens(args: argparse.Namespace, config: RunConfig, task=None) -> tuple[int, str]:
    """The number of new tokens to sample and the setting that chose it (named in errors).

    ``--max-new-tokens`` when given (non-zero); else, when ``task`` is not the run's own task (or
    there is no run), the task's :attr:`~gfnlm.tasks.base.Task.default_max_new_tokens` if it has
    one (``math``: 1024, room for a worked solution); else the run's (or the default config's)
    ``sampling.max_new_tokens``."""
    if args.max_new_tokens:
        return args.max_new_tokens, f"--max-new-tokens={args.max_new_tokens}"
    default = getattr(task, "default_max_new_tokens", None)
    name = getattr(task, "registry_name", None)
    if default and (args.run is None or name != config.task.name):
        return (
            default,
            f"task {name}'s default max_new_tokens={default} (fewer with --max-new-tokens)",
        )
    new_tokens = config.sampling.max_new_tokens
    return (
        new_tokens,
        f"sampling.max_new_tokens={new_tokens} (the run's; fewer with --max-new-tokens)",
    )


def _check_prompt_room(
    args: argparse.Namespace, config: RunConfig, model_dir: Path, prompt_tokens: int, task=None
) -> int:
    """The number of new tokens to sample (:func:`_new_tokens`), checked with the longest prompt
    against the model's context."""
    from gfnlm.models.loading import check_context

    new_tokens, setting = _new_tokens(args, config, task)
    check_context(model_dir, prompt_tokens, new_tokens, setting)
    return new_tokens


def _policy_for(saved: "_RunCheckpoint | None", config: RunConfig, device: str, model_dir: Path):
    """The policy of a run's newest complete checkpoint, or the plain base model, from
    ``model_dir``. Everything that needs no weights is checked before this is called."""
    from gfnlm.models.loading import resolve_device
    from gfnlm.training.policy import CausalLMPolicy

    torch_device = resolve_device(device, field="--device")
    policy = CausalLMPolicy.from_config(config.model, model_dir, torch_device)
    if saved is not None:
        policy.load_trainable_state_dict(saved.weights)
    return policy


def _eval_task(args: argparse.Namespace, config: RunConfig):
    """``--task`` (with the run's options when it is the run's own task), else the run's task."""
    from gfnlm.contracts.registry import build

    name = args.task or config.task.name
    options = config.task.options if name == config.task.name else {}
    return build("task", name, options)


# Samplers of p_base^alpha whose proposals run at temperature 1/alpha over the whole vocabulary:
# --temperature, --top-p and --min-p do not apply to them.
POWER_SAMPLERS = ("power_mh", "power_smc")


def _check_sample_counts(args: argparse.Namespace) -> tuple[int, ...]:
    """``--samples`` (default: the largest ``--k``, else 8) and the sorted ``--k`` values, each
    ``<= --samples``; ``args.samples`` is set to the number of samples."""
    ks = sorted(set(args.k or ()))
    for k in ks:
        _check_count("--k", k, 1)
    if args.samples is None:
        args.samples = ks[-1] if ks else 8
    _check_count("--samples", args.samples, 1)
    if ks and ks[-1] > args.samples:
        raise ConfigError(
            f"--k={ks[-1]}: must be <= --samples={args.samples} (pass@k from n >= k samples)"
        )
    return tuple(ks) or (args.samples,)


def _sampler_options(args: argparse.Namespace) -> dict:
    """``--sampler-option KEY=VALUE`` pairs, each value read as YAML (a number, true / false, a
    list or a mapping such as ``launch={cpu: true}``)."""
    import yaml

    options: dict = {}
    for item in args.sampler_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--sampler-option={quoted(item)}: must be KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise ConfigError(
                f"--sampler-option={quoted(item)}: the value is not valid YAML"
            ) from None
    return options


def _check_sampler_flag(args: argparse.Namespace) -> None:
    """``--sampler`` names a registered sampler (built-in or ``--import``ed), and the sampling
    flags given apply to it; checked before any model loads."""
    from gfnlm.contracts.registry import names

    allowed = names("sampler")
    if args.sampler not in allowed:
        raise ConfigError(
            f"--sampler={quoted(args.sampler)}: unknown sampler; allowed: {', '.join(allowed)}"
        )
    if args.sampler in POWER_SAMPLERS:
        for flag, value, default in (
            ("--temperature", args.temperature, 1.0),
            ("--top-p", args.top_p, 1.0),
            ("--min-p", args.min_p, 0.0),
        ):
            if value != default:
                raise ConfigError(
                    f"{flag}={value:g}: sampler {args.sampler} proposes at temperature 1/alpha "
                    "over the whole vocabulary; set --sampler-option alpha=A instead"
                )


def _build_sampler(args: argparse.Namespace, new_tokens: int, from_checkpoint: bool):
    """The ``--sampler`` with the sampling flags and ``--sampler-option``s (which win), built, so
    that its options, a server's URL or its launch interpreter are checked before the model loads.

    A server sampler (``sglang``, ``vllm``) given neither ``url`` nor ``launch`` starts its own
    server on the model folder (on CPU with the repository's recipe, ``make sglang-cpu`` /
    ``make vllm-cpu``), stopped when the command ends; it gets the checkpoint's weights
    (``weight_sync=full``) or, for the base model, serves the folder as it is."""
    from gfnlm.contracts.registry import build, lookup
    from gfnlm.models.loading import resolve_device
    from gfnlm.samplers.server import ServerSampler

    options = _sampler_options(args)
    flags: dict = {"max_new_tokens": new_tokens}
    if args.sampler in POWER_SAMPLERS:
        flags["seed"] = args.seed
    else:
        flags |= {"temperature": args.temperature, "top_p": args.top_p}
        if args.min_p:  # only when set: a sampler without min-p then rejects it by name
            flags["min_p"] = args.min_p
    if issubclass(lookup("sampler", args.sampler), ServerSampler):
        if not options.get("url") and options.get("launch") is None:
            cpu = resolve_device(args.device, field="--device").type == "cpu"
            options["launch"] = {"cpu": True} if cpu else {}
        options.setdefault("weight_sync", "full" if from_checkpoint else "none")
    return build("sampler", args.sampler, {**flags, **options})


def cmd_eval(args: argparse.Namespace) -> int:
    """``gfnlm eval``: evaluate a run's newest checkpoint (or the base model) on held-out prompts,
    graded by the task, and print the table (``--json``: also write the numbers and every
    question's responses). The data set, its answers, the prompts' length, the sampler and the
    ``--json`` path are checked before the model loads."""
    import json

    from gfnlm.evaluation.held_out import evaluate
    from gfnlm.tasks.prompts import PromptSet
    from gfnlm.tasks.records import load_records

    _check_sampling_flags(args)
    ks = _check_sample_counts(args)
    _check_count("--threads", args.threads, 0)
    if args.json:
        check_output_file(args.json, "--json")  # the results of a long evaluation must not be lost
    saved, config = _run_and_config(args)
    import_components(config.imports, "imports")
    import_components(args.imports)
    _check_sampler_flag(args)
    task = _eval_task(args, config)
    if args.metrics == "creative" or task.metrics == "creative":
        if args.sampler != "hf":
            raise ConfigError(
                f"--sampler={args.sampler}: --metrics creative samples with hf only "
                "(its estimates need the exact sampling log-probs)"
            )
        return cmd_eval_creative(args, saved, config, task)
    spec = args.prompts or config.data.eval
    if not spec:
        raise ConfigError("--prompts: required (the run has no data.eval); a data set with answers")
    columns = {
        "question_field": args.question_field or config.data.question_field,
        "answer_field": args.answer_field or config.data.answer_field,
    }
    records = load_records(spec, "--prompts", **columns)
    model_dir, tokenizer = _tokenizer_for(config)
    prompts = PromptSet.from_records(
        records,
        spec,
        "--prompts",
        tokenizer,
        config.data.max_prompt_tokens,
        require_answers=True,
        task=task,
        answer_field=columns["answer_field"],
    )
    longest = max(map(len, prompts.token_ids))
    new_tokens = _check_prompt_room(args, config, model_dir, longest, task)
    sampler = _build_sampler(args, new_tokens, from_checkpoint=saved is not None)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = _policy_for(saved, config, args.device, model_dir)
    result = evaluate(policy, prompts, args.samples, new_tokens, task=task, k=ks, sampler=sampler)
    label = "checkpoint" if args.run else "base model"
    how = (
        f"alpha={sampler.alpha:g}" if args.sampler in POWER_SAMPLERS else f"T={args.temperature:g}"
    )
    print(
        f"{len(prompts)} questions, task {task.registry_name}, n={args.samples} samples "
        f"({args.sampler} sampler, {how}), k={', '.join(map(str, ks))}, "
        f"max_new_tokens={new_tokens}, seed {args.seed}:"
    )
    print(format_eval_table({label: result.as_dict()}, k=ks))
    if result.truncated_rate > 0.5:
        print(
            f"gfnlm eval: warning: {100 * result.truncated_rate:.0f}% of the samples hit "
            f"--max-new-tokens={new_tokens} without EOS; answers are cut off "
            "(raise --max-new-tokens)",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        out = {
            "run": args.run,
            "model": config.model.path,
            "task": task.registry_name,
            "prompts": spec,
            "sampler": args.sampler,
            "sampler_options": _sampler_options(args),
            "temperature": args.temperature,
            "top_p": args.top_p,
            "min_p": args.min_p,
            "samples": args.samples,
            "k": list(ks),
            "max_new_tokens": new_tokens,
            "seed": args.seed,
            "metrics": result.as_dict(),
            "questions": list(result.questions),
        }
        write_text_atomically(args.json, json.dumps(out, indent=1), "--json")
    return 0


CREATIVE_ROWS = [
    ("semantic_diversity", "semantic diversity (1 - mean cos, MiniLM)"),
    ("lexical_redundancy", "lexical redundancy (mean pairwise ROUGE-L)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("distinct_3", "distinct-3"),
    ("fluency", "fluency (reference mean token log-prob)"),
    ("repetition_rate", "repetition rate (repeated word 3-grams)"),
    ("check_pass_rate", "prompt checks passed"),
    ("truncated_rate", "truncated (no EOS)"),
    ("mean_length", "mean length (tokens)"),
]


def cmd_eval_creative(
    args: argparse.Namespace, saved: "_RunCheckpoint | None", config: RunConfig, task
) -> int:
    """``gfnlm eval --metrics creative``: diversity / redundancy / quality proxies of k samples per
    open-ended prompt (:mod:`gfnlm.tasks.metrics`); ``--json`` also writes them with the
    responses."""
    import json

    from gfnlm.evaluation.held_out import evaluate_creative
    from gfnlm.tasks.metrics import SentenceEmbedder, load_checks, minilm_path
    from gfnlm.tasks.prompts import PromptSet
    from gfnlm.tasks.records import load_records

    if not args.prompts:
        raise ConfigError(
            "--prompts: required with --metrics creative (e.g. --prompts creative_eval)"
        )
    if args.samples < 2:
        raise ConfigError(f"--samples={args.samples}: must be >= 2 with --metrics creative")
    for alpha in args.target_alpha:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"--target-alpha={alpha}: must be a finite number > 0")
    # Read as accuracy evaluation reads its data sets; bad prompts fail before any model loads.
    records = load_records(
        args.prompts, "--prompts", question_field=args.question_field or "question"
    )
    checks = load_checks(args.prompts, "--prompts", records)
    minilm_path()
    model_dir, tokenizer = _tokenizer_for(config)
    prompts = PromptSet.from_records(
        records, args.prompts, "--prompts", tokenizer, config.data.max_prompt_tokens, task=task
    )
    new_tokens = _check_prompt_room(args, config, model_dir, max(map(len, prompts.token_ids)))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = _policy_for(saved, config, args.device, model_dir)
    result = evaluate_creative(
        policy,
        prompts,
        checks,
        args.samples,
        new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        min_p=args.min_p,
        embedder=SentenceEmbedder(),
        target_alphas=tuple(args.target_alpha),
    )
    label = "checkpoint" if args.run else "base model"
    print(
        f"{len(prompts)} prompts, k={args.samples} samples at T={args.temperature:g}, "
        f"top-p={args.top_p:g}, min-p={args.min_p:g}, seed {args.seed}:"
    )
    columns = {label: result.as_dict()} | {
        f"p_base^{a:g} (estimate)": v for a, v in result.target_estimates.items()
    }
    rows = (
        [*CREATIVE_ROWS, ("ess_min", "effective samples per prompt (min)")]
        if result.target_estimates
        else CREATIVE_ROWS
    )
    print(
        _table(
            [
                ("metric", *columns),
                *(
                    (name, *(f"{c[key]:.4f}" if key in c else "–" for c in columns.values()))
                    for key, name in rows
                ),
            ]
        )
    )
    if args.json:
        out = {
            "run": args.run,
            "model": args.model,
            "prompts": args.prompts,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "min_p": args.min_p,
            "seed": args.seed,
            "metrics": result.as_dict(),
            "target_estimates": {str(alpha): v for alpha, v in result.target_estimates.items()},
            "responses": [list(group) for group in result.responses],
        }
        write_text_atomically(args.json, json.dumps(out, indent=1), "--json")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``gfnlm sample``: print ``-n`` responses of a checkpoint (or the base model) to one prompt,
    formatted by the task (``--task``, else the run's; ``--template`` picks the factual
    templates), drawn by ``--sampler`` (``power_mh`` / ``power_smc``: from ``p_base^alpha``)."""
    from gfnlm.tasks.prompts import PromptSet

    _check_sampling_flags(args)
    _check_count("-n", args.n, 1)
    if not args.prompt.strip():
        raise ConfigError(f"--prompt={quoted(args.prompt)}: must not be empty")
    torch.manual_seed(args.seed)
    saved, config = _run_and_config(args)
    import_components(config.imports, "imports")
    _check_sampler_flag(args)
    task = _eval_task(args, config)
    record = {"question": args.prompt, **({"template": args.template} if args.template else {})}
    task.check_records([record], "--prompt")
    model_dir, tokenizer = _tokenizer_for(config)
    text = task.format_prompt(tokenizer, record)
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    new_tokens = _check_prompt_room(args, config, model_dir, len(ids))
    sampler = _build_sampler(args, new_tokens, from_checkpoint=saved is not None)
    policy = _policy_for(saved, config, args.device, model_dir)
    prompts = PromptSet((args.prompt,), (None,), (text,), (ids,), int(tokenizer.pad_token_id))
    sampler.setup(policy)
    try:
        rollouts = sampler.sample(prompts.batch([0]), args.n)
    finally:
        sampler.close()
    for i, response in enumerate(rollouts.response_text or ()):
        ending = "EOS" if bool(rollouts.ended_with_eos[i]) else "truncated"
        print(f"[{i}] ({int(rollouts.lengths[i])} tokens, {ending}) {response!r}")
    cost = getattr(sampler, "last_stats", None)
    if cost is not None and hasattr(cost, "token_cost"):  # an inference-time power sampler
        print(f"({args.sampler}: {cost.token_cost:.1f} tokens decoded per token returned)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``gfnlm serve``: start a SGLang (``--engine sglang``) or vLLM (``--engine vllm``) server
    for a model folder, print its URL, and stop it (and every process it started) on Ctrl-C,
    SIGTERM or any error. ``--cpu`` applies the repository's CPU recipe (``tools/sglang_cpu`` or
    ``tools/vllm_cpu``: the ``make sglang-cpu`` / ``make vllm-cpu`` venv, its environment and
    flags)."""
    from gfnlm.models.loading import resolve_model_path
    from gfnlm.serving.serve import SGLangServer, resolve_launch
    from gfnlm.serving.sglang_client import ServerError
    from gfnlm.serving.vllm_serve import VLLMServer, resolve_vllm_launch

    if args.lora_rank < 0:
        raise ConfigError(f"--lora-rank={args.lora_rank}: must be >= 0 (0 = no LoRA adapters)")
    if args.lora_rank and args.engine != "vllm":
        raise ConfigError(
            f"--lora-rank={args.lora_rank}: only with --engine vllm "
            "(SGLang servers get merged weights)"
        )
    options: dict = {
        "args": list(args.server_args),
        "env": {},
        "port": args.port,
        "startup_timeout_s": args.startup_timeout,
        "cpu": args.cpu,
    }
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env={quoted(item)}: must be KEY=VALUE")
        options["env"][key] = value
    if args.python is not None:
        options["python"] = args.python
    if args.startup_timeout is None:
        # the recipe's (CPU start-up is slow) or LaunchConfig's default
        del options["startup_timeout_s"]
    flag = {"args": "the flags after --"}
    field = lambda key: flag.get(key, "--" + key.removesuffix("_s").replace("_", "-"))
    model_dir = resolve_model_path(args.model)
    if args.engine == "vllm":
        server = VLLMServer(
            model_dir, resolve_vllm_launch(options, field), lora_rank=args.lora_rank
        )
    else:
        server = SGLangServer(model_dir, resolve_launch(options, field))
    with server:
        print(
            f"{server.engine} server for {model_dir} at {server.url} (pid {server.process.pid}); "
            f"use sampling.sampler={args.engine} sampling.sampler_options.url={server.url}; "
            "Ctrl-C stops it",
            flush=True,
        )
        while server.alive():
            time.sleep(1.0)
        raise ServerError(
            f"{server.engine} server {server.url} exited on its own; "
            f"last output: {server.log_tail()}"
        )


def cmd_export(args: argparse.Namespace) -> int:
    """``gfnlm export``: a run's newest complete checkpoint (or ``--step``'s) as a Hugging Face
    model folder with LoRA merged in (``--merged``) or as the PEFT adapter folder
    (``--adapter``), written atomically; every input is checked before the model loads."""
    from gfnlm.training.export import export_checkpoint

    kind, out = ("merged", args.merged) if args.merged is not None else ("adapter", args.adapter)
    if not out:
        raise ConfigError(f"--{kind}: give the output folder")
    print(
        "gfnlm export: "
        f"{export_checkpoint(args.run, kind, out, args.step, args.dtype, args.force)}",
        flush=True,
    )
    return 0


class HelpWithDefaults(argparse.HelpFormatter):
    """Help that states every option's default: ``(default: VALUE)`` appended to each option with
    a value for default whose help does not already say it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or action.required or default is None or default is False:
            return text
        if default == [] or default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``gfnlm`` argument parser with its ``train``, ``eval`` and ``sample`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="gfnlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train a policy from a config file plus key=value overrides"
    )
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument(
        "overrides", nargs="*", help="key=value, e.g. train.steps=20 target.options.alpha=2"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, so the components it registers can be named "
        "(repeatable; a MODULE.py of the working directory is found) (default: none)",
    )
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser(
        "sweep", help="run a grid of training runs from one YAML spec and compare them"
    )
    sweep.add_argument("spec", help="sweep spec YAML (see configs/sweeps/)")
    sweep.add_argument("overrides", nargs="*", help="key=value for every run, e.g. train.steps=2")
    sweep.add_argument(
        "--out",
        default=None,
        help="folder of the runs, the table and the plot (default: the spec's out)",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="check every run and list them; run nothing"
    )
    sweep.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="M",
        help="a metric to plot against the step (repeatable; default: the spec's plot)",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(func=cmd_sweep)

    serve = sub.add_parser(
        "serve", help="start a SGLang or vLLM server for a model (stopped on Ctrl-C)"
    )
    serve.add_argument(
        "model", nargs="?", default="smollm2", help="model folder, or 'smollm2' (default)"
    )
    serve.add_argument(
        "--engine", choices=["sglang", "vllm"], default="sglang", help="the server (default sglang)"
    )
    serve.add_argument(
        "--python",
        default=None,
        help="interpreter with the engine installed (default: this one; with --cpu: "
        ".bench-venvs/sglang or .bench-venvs/vllm)",
    )
    serve.add_argument(
        "--cpu",
        action="store_true",
        help="CPU server with the repository's recipe (tools/sglang_cpu or tools/vllm_cpu; "
        "build it with make sglang-cpu / make vllm-cpu)",
    )
    serve.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="vLLM: accept LoRA adapters of this rank at run time "
        "(what sampler_options.weight_sync=lora needs); 0 = none",
    )
    serve.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    serve.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the server process (repeatable) (default: none)",
    )
    serve.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        help="seconds to wait for /health (default 300; 600 with --cpu)",
    )
    serve.set_defaults(func=cmd_serve, server_args=[])  # flags after `--` go to the server

    export = sub.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face model folder (LoRA merged) "
        "or as its PEFT adapter",
    )
    export.add_argument("run", help="run directory (or one checkpoint folder)")
    export.add_argument(
        "--step",
        type=int,
        default=None,
        help="export the checkpoint of this step (default: the newest complete one)",
    )
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--merged",
        metavar="OUT",
        default=None,
        help="write a model folder (weights with LoRA merged in, config, tokenizer) that "
        "transformers, SGLang and vLLM load",
    )
    what.add_argument(
        "--adapter",
        metavar="OUT",
        default=None,
        help="write the PEFT adapter folder (LoRA runs) for PeftModel.from_pretrained",
    )
    export.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default: float32 for --merged, as trained "
        "for --adapter)",
    )
    export.add_argument(
        "--force", action="store_true", help="replace OUT when it exists and is not empty"
    )
    export.set_defaults(func=cmd_export)

    for name, func, help_text in (
        ("eval", cmd_eval, "accuracy avg@k / pass@k / maj@k / greedy on a prompt file"),
        ("sample", cmd_sample, "print responses of a checkpoint to one prompt"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "sample":
            p.add_argument(
                "run", nargs="?", default=None, help="run directory (omit for the base model)"
            )
            p.add_argument("--prompt", required=True)
            p.add_argument(
                "-n", type=int, default=4, help="number of responses (default: %(default)s)"
            )
            p.add_argument(
                "--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)"
            )
            p.add_argument(
                "--template",
                default=None,
                choices=("short_answer", "plain"),
                help="plain: the prompt is the whole user message (creative prompts); "
                "default: the task's own",
            )
            p.add_argument(
                "--task",
                default=None,
                help="task that formats the prompt (default: the run's task, else factual)",
            )
        else:
            p.add_argument(
                "--run",
                default=None,
                help="run directory (default: none, the base model of --model)",
            )
            p.add_argument(
                "--prompts",
                default=None,
                help="data set with questions and answers: JSONL, parquet, JSON, CSV, a "
                "save_to_disk folder, or a bundled set (default: the run's data.eval)",
            )
            p.add_argument(
                "--task",
                default=None,
                help="task that formats and grades the prompts: factual, math, creative, "
                "chain_sum, or a registered one (default: the run's task, else factual)",
            )
            p.add_argument(
                "--question-field",
                default=None,
                help="question column (default: the run's, 'question')",
            )
            p.add_argument(
                "--answer-field", default=None, help="answer column (default: the run's, 'answers')"
            )
            p.add_argument(
                "--samples",
                type=int,
                default=None,
                help="n samples per question (default: the largest --k, else 8)",
            )
            p.add_argument(
                "--k",
                type=int,
                nargs="+",
                default=None,
                metavar="K",
                help="k of pass@k and maj@k, one or several (--k 1 4 16), all from the same n "
                "samples; pass@k is the unbiased estimate (default: n)",
            )
            p.add_argument(
                "--metrics",
                default="accuracy",
                choices=("accuracy", "creative"),
                help="accuracy: questions with answers; creative: diversity and quality "
                "proxies of open-ended responses (gfnlm.tasks.metrics)",
            )
            p.add_argument(
                "--top-p",
                type=float,
                default=1.0,
                help="nucleus sampling (default: %(default)s)",
            )
            p.add_argument(
                "--json",
                default=None,
                help="also write the metrics and every question's responses (the answer "
                "extracted from each, whether it is correct, its length, whether it was cut "
                "off) to this file, atomically; checked writable before the model loads "
                "(default: none)",
            )
            p.add_argument(
                "--target-alpha",
                type=float,
                nargs="+",
                default=[],
                metavar="ALPHA",
                help="--metrics creative: also estimate the metrics of the exact target "
                "p_base^ALPHA from the same samples (self-normalised importance weights) "
                "(default: none)",
            )
            p.add_argument(
                "--threads",
                type=int,
                default=0,
                help="torch CPU threads; 0: as many as torch picks",
            )
            p.add_argument(
                "--import",
                dest="imports",
                action="append",
                default=[],
                metavar="MODULE",
                help="import MODULE first (a task or component of your own; "
                "repeatable; a MODULE.py of the working directory is found) (default: none)",
            )
        p.add_argument(
            "--temperature",
            type=float,
            default=1.0,
            help="sampling temperature (eval: 1/alpha gives the low-temperature baseline) "
            "(default: %(default)s)",
        )
        p.add_argument(
            "--min-p",
            type=float,
            default=0.0,
            help="min-p truncation, relative to the most likely token; 0 = off "
            "(default: %(default)s)",
        )
        p.add_argument(
            "--sampler",
            default="hf",
            help="the registered sampler that draws the samples: hf (in-process), sglang or "
            "vllm (a server, started on the model unless --sampler-option url=URL names one; "
            "on CPU with make sglang-cpu / make vllm-cpu), power_mh or power_smc (p_base^alpha "
            "by MH or SMC; --sampler-option alpha=4), or one of your own (default: %(default)s)",
        )
        p.add_argument(
            "--sampler-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an option of --sampler, the value read as YAML, e.g. alpha=4, particles=8, "
            "url=http://127.0.0.1:30000, 'launch={cpu: true}' (repeatable; default: none)",
        )
        p.add_argument(
            "--model",
            default="smollm2",
            help="base model when no run is given (default: %(default)s)",
        )
        p.add_argument(
            "--max-new-tokens",
            type=int,
            default=0,
            help="longest response in tokens; 0: "
            + (
                "the task's own length (math: 1024) when --task names another task than the "
                "run's or no run is given, else the run's sampling.max_new_tokens (24 by default)"
                if name == "eval"
                else "the run's sampling.max_new_tokens (24 by default)"
            )
            + " (default: %(default)s)",
        )
        p.add_argument(
            "--device",
            default="auto",
            choices=("auto", "cpu", "cuda"),
            help="device (default: %(default)s)",
        )
        p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
        p.set_defaults(func=func)
    for command in sub.choices.values():
        command.formatter_class = HelpWithDefaults
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; errors print one line (exit 2 for bad input, 1 otherwise).

    Set ``GFNLM_DEBUG=1`` to get the full traceback instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    server_args: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # gfnlm serve [options] -- sglang flags
        argv, server_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("train", "sweep"):  # overrides may come after flags: train CFG --quiet a=1
        args.overrides += [item for item in unknown if "=" in item and not item.startswith("-")]
        unknown = [item for item in unknown if item not in args.overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "serve":
        args.server_args = server_args
    # SIGTERM unwinds like Ctrl-C: launched servers stop, a save never half-switches
    raise_on_sigterm()
    try:
        return int(args.func(args))
    except GfnlmError as error:
        # bad input (exit 2) or a run that cannot go on (exit 1); bugs keep tracebacks
        if os.environ.get("GFNLM_DEBUG"):
            raise
        print(f"gfnlm {args.command}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, InputError) else 1
    except KeyboardInterrupt as interrupt:
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        kept = {"train": _what_training_kept, "serve": lambda _: "; the server is stopped"}.get(
            args.command, lambda _: ""
        )(args)
        print(f"gfnlm {args.command}: {how}{kept}", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130


def _what_training_kept(args: argparse.Namespace) -> str:
    """The end of the message of an interrupted ``gfnlm train``: whether the run directory
    (``args.out_dir``, set once the config is read) holds a complete checkpoint to resume from."""
    from gfnlm.training.checkpoint import latest_checkpoint

    out_dir = getattr(args, "out_dir", None)
    try:
        written = (
            out_dir is not None and latest_checkpoint(Path(out_dir) / "checkpoints") is not None
        )
    except OSError:  # an unreadable run directory: say nothing rather than fail while reporting
        return ""
    return "; the last checkpoint is intact" if written else "; no checkpoint was written yet"


if __name__ == "__main__":
    sys.exit(main())
