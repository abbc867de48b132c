"""Running the reference implementations: ``run`` distils a student, ``serve-teacher`` serves one.

torch, transformers and the implementations are imported inside the commands, when they run.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kdatlas.cli.common import console, fail


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--set expects KEY=VALUE, got '{pair}' (e.g. --set temperature=2.0)")
        overrides[key.strip()] = value.strip()
    return overrides


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Family(str, Enum):
    llama = "llama"
    gpt2 = "gpt2"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


def run(
    method_id: Annotated[
        str | None,
        typer.Argument(metavar="ID", help="An implemented entry id, e.g. forward-kl (not needed with --resume)."),
    ] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps (default: the method's embedded budget).")
    ] = None,
    sft_steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Shared supervised warm start of both students before distillation (default: the embedded budget; 0 for none).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for data order, initialisation and sampling.")] = 0,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: local path or hub id (default: the embedded tiny teacher).")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="Student: local path or hub id (default: the embedded tiny student).")
    ] = None,
    student_family: Annotated[
        Family, typer.Option(help="Architecture of the embedded student (same depth and width).")
    ] = Family.llama,
    data: Annotated[
        str | None,
        typer.Option(help="JSONL file with 'prompt' and 'response' per line (default: the synthetic suite)."),
    ] = None,
    eval_data: Annotated[
        list[str] | None,
        typer.Option(
            help="A further held-out JSONL set, scored by exact match and word ROUGE-L under its file name "
            "(with --data; repeatable: the MiniLLM protocol's instruction sets).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<id>-<time>).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a hyper-parameter, e.g. --set temperature=2.0 (repeatable)."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Replace the method's data source: dataset, teacher, student[:T], mixed:λ[:T] or adaptive "
            "(token-level objectives only; see the 'Data sources' page)."
        ),
    ] = None,
    teacher_topk: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train from the teacher's top-K log-probs, computed once and stored (safetensors), "
            "without a teacher forward pass per step (forward-kl / reverse-kl).",
        ),
    ] = None,
    teacher_url: Annotated[
        str | None,
        typer.Option(
            help="Black-box methods: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8765/v1 "
            "(see `kdatlas serve-teacher`)."
        ),
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option(help="Model name sent to --teacher-url (default: kdatlas-embedded-teacher).")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the endpoint's API key (default: OPENAI_API_KEY)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow custom model code from the hub (off by default).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Sequences per batch and process (effective batch: × accumulation × processes).")
    ] = 32,
    eval_size: Annotated[
        int | None, typer.Option(min=1, help="Held-out items scored (default: the suite's, 210 or 240).")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Generation limit of white-box runs at evaluation and for generated data (default 24)."),
    ] = None,
    gradient_accumulation: Annotated[
        int, typer.Option(min=1, help="Batches per optimizer step (token-weighted: exactly one larger batch).")
    ] = 1,
    precision: Annotated[
        Precision, typer.Option(help="auto: bf16 autocast on a GPU that supports it, else fp32.")
    ] = Precision.auto,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Optimizer steps between checkpoints (in RUN_DIR/checkpoints).")
    ] = 100,
    keep_checkpoints: Annotated[
        bool, typer.Option(help="Keep RUN_DIR/checkpoints after the run (removed by default once it ends).")
    ] = False,
    log_with: Annotated[
        str,
        typer.Option(help="Trackers for loss curves: auto (TensorBoard in RUN_DIR/logs when installed), none, "
                     "or an Accelerate tracker such as tensorboard or wandb."),
    ] = "auto",
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue a killed run from RUN_DIR's checkpoints, with the options it was started with.",
                     metavar="RUN_DIR"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Distil a student with a method and compare it with the baseline student and the teacher."""
    from kdatlas.runner import RunError, resume_run, run_method
    from reference_impls.core.recipe import RunConfig

    endpoint = {"teacher_model": teacher_model, "api_key_env": api_key_env}
    config = RunConfig(
        device=device.value,
        steps=steps,
        sft_steps=sft_steps,
        seed=seed,
        teacher=teacher,
        teacher_url=teacher_url,
        student=student,
        student_family=student_family.value,
        data=data,
        eval_data=tuple(eval_data or ()),
        trust_remote_code=trust_remote_code,
        teacher_topk=teacher_topk,
        progress=progress,
        eval_size=eval_size,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        precision=precision.value,
        checkpoint_every=checkpoint_every,
        log_with=log_with,
        **{name: value for name, value in endpoint.items() if value is not None},
    )
    overrides = _parse_overrides(set_ or [])
    try:
        if resume is not None:
            _check_resume_options(method_id, resume, config, overrides, source, out)
            resume_run(resume, progress=progress, console=console, keep_checkpoints=keep_checkpoints)
            return
        if method_id is None:
            raise fail("give the method to run (e.g. `kdatlas run forward-kl`), or --resume RUN_DIR")
        run_method(
            method_id, config, out=out, overrides=overrides, source=source, console=console,
            keep_checkpoints=keep_checkpoints,
        )
    except RunError as error:
        raise fail(str(error)) from None


def _check_resume_options(
    method_id: str | None, run_dir: Path, config: object, overrides: dict, source: str | None, out: Path | None
) -> None:
    """With --resume the run's own options apply: refuse others rather than ignore them."""
    from dataclasses import asdict

    from kdatlas.runner import read_request
    from reference_impls.core.recipe import RunConfig

    started, _, _, _ = read_request(run_dir)
    if method_id is not None and method_id != started:
        raise fail(f"{run_dir} is a run of '{started}', not '{method_id}'")
    given = {k for k, v in asdict(config).items() if k != "progress" and v != getattr(RunConfig(), k)}
    if given or overrides or source or out:
        extra = sorted(given) + (["--set"] if overrides else []) + (["--source"] if source else []) + (["--out"] if out else [])
        raise fail(
            f"--resume continues the run with the options it was started with; drop {', '.join(extra)} "
            "(or start a new run)"
        )


def serve_teacher(
    model: Annotated[
        str,
        typer.Option(
            help="'embedded' (the shipped instruction teacher black-box pipelines use), 'embedded-whitebox' (the white-box methods' teacher) or a local path / hub id."
        ),
    ] = "embedded",
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback only unless --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 8765,
    name: Annotated[
        str | None, typer.Option(help="Model id clients send as 'model' (default: derived from --model).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Default and upper bound of a request's max_tokens.")
    ] = 64,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer <key>' with the key read from this environment variable."
        ),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow binding a non-loopback address such as 0.0.0.0 (no TLS: set a key).")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow custom model code from the hub (off by default).")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(help="Check the options and print what would be served, without loading or serving."),
    ] = False,
) -> None:
    """Serve a local model as an OpenAI-compatible endpoint (/v1/models, /v1/completions, /v1/chat/completions)."""
    from reference_impls.teachers import server as teacher_server

    try:
        teacher_server.check_bind_host(host, allow_remote)
        api_key = teacher_server.read_api_key(api_key_env) if api_key_env else None
    except ValueError as error:
        raise fail(str(error)) from None
    auth = f"bearer key from ${api_key_env}" if api_key_env else "none"
    if dry_run:
        console.print(f"would serve {model!r} on http://{host}:{port}/v1 (authentication: {auth})")
        return
    loaded, tokenizer, default_name = teacher_server.load_served_model(model, device.value, trust_remote_code)
    config = teacher_server.ServerConfig(
        model_name=name or default_name, max_new_tokens=max_new_tokens, api_key=api_key
    )
    try:
        server = teacher_server.make_server(
            loaded, tokenizer, host=host, port=port, config=config, allow_remote=allow_remote
        )
    except (OSError, ValueError) as error:
        raise fail(f"cannot serve on {host}:{port}: {error}") from None
    console.print(
        f"serving [bold]{config.model_name}[/] at {server.base_url} (authentication: {auth}); Ctrl+C stops"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
