"""The ``fer-bench`` command line (DESIGN.md section 8).

Errors are one line: what was wrong, what is allowed, how to fix it; exit code 2 for usage errors
(unknown names, bad parameters or options, missing data), 1 for failures. Method hyperparameters are
never flags of their own: ``--set method.param=value``.
"""
from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

import fer_bench
from fer_bench.method import PROFILES, ParameterError, parse_overrides
from fer_bench.registry import DATASETS, METHODS, UnknownNameError, get_dataset, load_plugin_file

USAGE_ERRORS = (UnknownNameError, ParameterError, ValueError, FileNotFoundError, ImportError, ConnectionError)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known bad-input exceptions into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USAGE_ERRORS as exc:
            click.echo(f"fer-bench: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _load_plugins(plugins: tuple[str, ...]) -> None:
    for path in plugins:
        load_plugin_file(path)


def _split_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ParameterError(f"--{what} {text!r} must be a comma-separated list of {cast.__name__}s, e.g. 0,1,2.") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(fer_bench.__version__, prog_name="fer-bench")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """fer-bench: a comparative benchmark harness for facial expression recognition."""
    signal.signal(signal.SIGTERM, _terminate)  # as Ctrl-C: cancel cleanly (Slurm's scancel, kill, timeouts)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@main.command("list")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(), help="A Python file that registers methods.")
@one_line_errors
def list_cmd(plugins: tuple[str, ...]) -> None:
    """Registered methods (with their profiles) and datasets."""
    import fer_bench.data  # noqa: F401  (registers the built-in dataset adapters)

    _load_plugins(plugins)
    click.echo("Methods (profiles: " + ", ".join(PROFILES) + "):")
    for name in METHODS.names():
        cls = METHODS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        profiles = ", ".join(p for p in PROFILES if p in cls.profiles)
        click.echo(f"  {name:<12} [{profiles}]  {summary}")
    click.echo("Datasets:")
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        card = cls.card().splitlines()[0] if cls.card() else ""
        click.echo(f"  {name:<12} splits: {'/'.join(cls.splits):<16} {card}")


RAY_OPTIONS = ("ray_address", "cpus_per_cell", "gpus_per_cell", "cell_retries", "ray_artifacts")
LOCAL_OPTIONS = ("jobs",)


def executor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose and size the executor (shared by ``run`` and ``tables``)."""
    options = [
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: cells on this machine, as many at once as its cores hold (--jobs); ray: cells as Ray "
                          "tasks (pip install 'fer-bench[ray]')."),
        click.option("--jobs", type=int, default=None,
                     help="[local] cells at once (default: cores / --threads-per-cell; 1 with CUDA)."),
        click.option("--ray-address", default=None, help="[ray] auto or HOST:PORT of a running cluster; none: a local instance."),
        click.option("--cpus-per-cell", type=float, default=None,
                     help="[ray] CPUs each cell's task asks for (default: --threads-per-cell)."),
        click.option("--gpus-per-cell", type=float, default=0, show_default=True, help="[ray] GPUs each cell's task asks for."),
        click.option("--cell-retries", type=int, default=2, show_default=True,
                     help="[ray] resubmissions of a cell whose worker process or node died."),
        click.option("--ray-artifacts", type=click.Choice(["auto", "return"]), default="auto", show_default=True,
                     help="[ray] auto: workers write in the run directory when they see it, else return artifacts; "
                          "return: always send them back to the driver."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


reuse_option = click.option(
    "--reuse", "reuse", multiple=True, type=click.Path(),
    help="Another run directory: its finished cells with the same id are copied in, not run again; repeatable.")


def make_executor(ctx: click.Context, executor: str, plugins: tuple[str, ...], jobs: int | None = None,
                  **ray: Any) -> Any:
    """The chosen executor; an option of the other executor is a usage error."""
    from fer_bench.registry import plugin_sources
    from fer_bench.runner import EXECUTORS
    other = RAY_OPTIONS if executor == "local" else LOCAL_OPTIONS
    for name in other:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise ParameterError(f"--{name.replace('_', '-')} applies to --executor "
                                 f"{'ray' if executor == 'local' else 'local'} only; drop it or change --executor.")
    if executor == "local":
        return EXECUTORS["local"](progress=None, jobs=jobs, plugins=plugin_sources(plugins))
    import fer_bench.ray_executor  # noqa: F401  (registers "ray"; Ray is an optional extra, imported only here)
    return EXECUTORS["ray"](progress=None, address=ray["ray_address"], cpus_per_cell=ray["cpus_per_cell"],
                            gpus_per_cell=ray["gpus_per_cell"], retries=ray["cell_retries"],
                            artifacts=ray["ray_artifacts"], plugins=plugins)


def interrupted(*run_dirs: Path) -> None:
    stores = " and ".join(str(d / "results.sqlite") for d in run_dirs)
    click.echo(f"fer-bench: interrupted; finished cells are in {stores}: rerun the same command to resume the "
               f"rest.", err=True)
    sys.exit(130)


@main.command()
@click.option("--methods", default="baseline", show_default=True, help="Comma-separated method names.")
@click.option("--dataset", "datasets", multiple=True, default=("synthetic",), show_default=True,
              help="NAME[:opt=value,...]; repeat for several datasets.")
@click.option("--data-root", type=click.Path(), default=None, help="Folder of a downloaded dataset (or $FER_BENCH_DATA).")
@click.option("--test-dataset", "test_datasets", multiple=True,
              help="NAME[:opt=value,...]: train on --dataset, test on this dataset's test split (shared classes "
                   "only; read from $FER_BENCH_DATA/NAME); repeat for several.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--profile", type=click.Choice(PROFILES), default="quick", show_default=True)
@click.option("--label-noise", default="0", show_default=True, help="Comma-separated label-noise rates on train.")
@click.option("--noise-kind", type=click.Choice(["symmetric", "pairflip", "asymmetric"]), default="symmetric",
              show_default=True)
@click.option("--noise-matrix", type=click.Path(), default=None,
              help="CSV of asymmetric-noise weights, rows = true emotion, columns = noisy emotion (by name).")
@click.option("--set", "sets", multiple=True, help="method.param=value (value lists a,b make a grid axis); * for all methods.")
@click.option("--budget", default=None, help="epochs=N: the training budget of every method (anchor images = N x "
                                             "training-set size); default: the profile's.")
@click.option("--out", type=click.Path(), default="runs/default", show_default=True, help="Run directory.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--threads-per-cell", type=int, default=1, show_default=True,
              help="Torch CPU threads of each cell, on every executor (part of the cell id when not 1: results "
                   "differ in the last bits across thread counts).")
@executor_options
@reuse_option
@click.option("--retry-failed", is_flag=True, help="Run failed cells again.")
@click.option("--tsne", is_flag=True, help="2-D maps of embeddings with t-SNE instead of PCA.")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(), help="A Python file that registers methods.")
@click.pass_context
@one_line_errors
def run(ctx: click.Context, methods: str, datasets: tuple[str, ...], data_root: str | None,
        test_datasets: tuple[str, ...], seeds: str, profile: str, label_noise: str, noise_kind: str,
        noise_matrix: str | None, sets: tuple[str, ...], budget: str | None, out: str, device: str,
        threads_per_cell: int, executor: str, reuse: tuple[str, ...],
        retry_failed: bool, tsne: bool, plugins: tuple[str, ...], **ray: Any) -> None:
    """Train and evaluate a grid of methods x datasets x seeds x label-noise rates."""
    from fer_bench.method import resolve_device
    from fer_bench.runner import check_reuse_dirs, check_run_dir, expand_grid, run_grid
    from fer_bench.tables import write_run_outputs

    _load_plugins(plugins)
    method_names = _split_list(methods, str, "methods")
    for name in method_names:
        METHODS.get(name)
    resolve_device(device)
    overrides = parse_overrides(sets, method_names)
    matrix = _noise_matrix_option(noise_kind, noise_matrix)
    specs = expand_grid(method_names, list(datasets), _split_list(seeds, int, "seeds"),
                        _split_list(label_noise, float, "label-noise"), profile, overrides, device, data_root, noise_kind,
                        list(test_datasets) or None, matrix, budget, threads_per_cell)
    run_dir = check_run_dir(out)
    reuse_dirs = check_reuse_dirs(list(reuse))
    total = len(specs)
    counter = {"i": 0}

    def report(event: str, spec, result) -> None:
        counter["i"] += 1
        where = f"[{counter['i']}/{total}] {spec.method} on {spec.dataset_label} seed {spec.seed} noise {spec.label_noise:g}"
        if result is None:
            click.echo(f"{where}: {event}")
        elif result.status == "done":
            resumed = result.info.get("resumed_from_epoch", 0)
            click.echo(f"{where}: done in {result.seconds:.1f}s, accuracy {result.metrics.get('accuracy', float('nan')):.4f}"
                       + (f" (resumed from its checkpoint at epoch {resumed})" if resumed else ""))
            warn_at_floor(spec, result)
        else:
            click.echo(f"{where}: FAILED: {result.error}")

    runner = make_executor(ctx, executor, plugins, **ray)
    click.echo(f"fer-bench {fer_bench.__version__}: {total} cells -> {run_dir}")
    try:
        outcome = run_grid(specs, run_dir, runner, retry_failed, report, reuse=reuse_dirs)
    except KeyboardInterrupt:
        interrupted(run_dir)
    summary = write_run_outputs(run_dir, specs, tsne=tsne)
    click.echo(summary)
    from fer_bench.report import write_report
    click.echo(f"report: {write_report(run_dir)}")
    failed = len(outcome["failed"]) + len(outcome["failed_before"])
    if failed:
        earlier = f" ({len(outcome['failed_before'])} in an earlier run, skipped)" if outcome["failed_before"] else ""
        click.echo(f"{failed} cell(s) failed{earlier}; see {run_dir / 'summary.md'} and rerun with --retry-failed.",
                   err=True)
        sys.exit(1)


@main.command()
@click.option("--methods", required=True, help="Comma-separated method names; each gets the same search.")
@click.option("--dataset", default="synthetic", show_default=True, help="NAME[:opt=value,...].")
@click.option("--data-root", type=click.Path(), default=None, help="Folder of a downloaded dataset (or $FER_BENCH_DATA).")
@click.option("--trials", type=int, default=12, show_default=True, help="Trials per method.")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Seeds of the tuned configuration's final cells; trials use the first.")
@click.option("--profile", type=click.Choice(PROFILES), default="quick", show_default=True)
@click.option("--space", "spaces", multiple=True,
              help="method.param=log:LOW:HIGH | uniform:LOW:HIGH | int:LOW:HIGH | choice:A|B (over the declared range).")
@click.option("--set", "sets", multiple=True, help="method.param=value held fixed in every trial; * for all methods.")
@click.option("--budget", default=None, help="epochs=N: the training budget of every trial and final cell.")
@click.option("--label-noise", type=float, default=0.0, show_default=True,
              help="Label-noise rate on train for every trial and final cell (validation stays clean).")
@click.option("--noise-kind", type=click.Choice(["symmetric", "pairflip"]), default="symmetric", show_default=True)
@click.option("--sampler-seed", type=int, default=0, show_default=True, help="Seed of the TPE sampler.")
@click.option("--startup-trials", type=int, default=None,
              help="Trials per method drawn at random before TPE models the history (default: Optuna's 10).")
@click.option("--parallel-trials", type=int, default=2, show_default=True,
              help="Trials asked at once per method (cells in flight); part of what makes a search reproducible.")
@click.option("--out", type=click.Path(), default="runs/tune", show_default=True, help="Run directory.")
@click.option("--device", default="auto", show_default=True)
@executor_options
@click.option("--plugin", "plugins", multiple=True, type=click.Path(), help="A Python file that registers methods.")
@click.pass_context
@one_line_errors
def tune(ctx: click.Context, methods: str, dataset: str, data_root: str | None, trials: int, seeds: str,
         profile: str, spaces: tuple[str, ...], sets: tuple[str, ...], budget: str | None, label_noise: float,
         noise_kind: str, sampler_seed: int,
         startup_trials: int | None, parallel_trials: int, out: str, device: str, executor: str, plugins: tuple[str, ...], **ray: Any) -> None:
    """Equal-effort tuning: the same TPE search per method on validation, then its best configuration on --seeds."""
    from fer_bench.method import resolve_device
    from fer_bench.runner import check_run_dir, expand_grid, parse_budget
    from fer_bench.tables import write_run_outputs
    from fer_bench.tuning import STARTUP_TRIALS, parse_space_options, search_space
    from fer_bench.tuning import TRIALS_DIR, tune as run_tuning

    _load_plugins(plugins)
    method_names = _split_list(methods, str, "methods")
    for name in method_names:
        METHODS.get(name)
    resolve_device(device)
    if parallel_trials < 1:
        raise ParameterError(f"--parallel-trials must be at least 1, got {parallel_trials}.")
    space_texts = parse_space_options(list(spaces), method_names)
    resolved = {name: search_space(name, space_texts.get(name)) for name in method_names}  # exit 2 before any trial
    grid = {"sets": parse_overrides(sets, method_names), "device": device, "data_root": data_root,
            "budget": parse_budget(budget), "label_noise": label_noise, "noise_kind": noise_kind}
    expand_grid(method_names, [dataset], [0], [label_noise], profile, grid["sets"], device, data_root,  # --set, noise
                noise_kind, budget=budget)
    run_dir = check_run_dir(out)
    runner = make_executor(ctx, executor, plugins, **ray)
    click.echo(f"fer-bench {fer_bench.__version__}: tuning {', '.join(method_names)} on {dataset}, {trials} trials "
               f"each -> {run_dir}")

    def report(event: str, spec, result) -> None:
        where = f"{spec.method} {spec.overrides_label or '(defaults)'} seed {spec.seed}"
        if result is None:
            click.echo(f"{where}: {event}")
        elif result.status == "done":
            click.echo(f"{where}: validation {result.metrics.get('final_val_accuracy', float('nan')):.4f}, "
                       f"test {result.metrics.get('accuracy', float('nan')):.4f}")
        else:
            click.echo(f"{where}: FAILED: {result.error}")

    try:
        summary = run_tuning(method_names, dataset, trials, profile, _split_list(seeds, int, "seeds"), run_dir,
                             runner, resolved, sampler_seed, grid, report, parallel_trials,
                             STARTUP_TRIALS if startup_trials is None else startup_trials)
    except KeyboardInterrupt:
        interrupted(run_dir, run_dir / TRIALS_DIR)
    for name, record in summary.items():
        click.echo(f"{name}: best validation {record['best_value']:.4f} (trial {record['best_trial']}) with "
                   + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in sorted(record["best_params"].items())))
    click.echo(write_run_outputs(run_dir, None))
    from fer_bench.report import write_report
    click.echo(f"report: {write_report(run_dir)}")


def warn_at_floor(spec, result) -> None:
    """Warn when a finished cell's final validation accuracy is within a point of the majority class."""
    m = result.metrics
    if m.get("at_floor") == 1.0:
        click.echo(f"WARNING: {spec.method} on {spec.dataset_label} seed {spec.seed} ended at the floor: final "
                   f"validation accuracy {m['final_val_accuracy']:.4f} against {m['val_floor_accuracy']:.4f} for the "
                   f"majority class; look at its learning curve (plots/curves_*.png) before reading its numbers.",
                   err=True)


def _noise_matrix_option(kind: str, path: str | None) -> dict | None:
    from fer_bench.data.noise import read_noise_matrix
    if (kind == "asymmetric") != (path is not None):
        raise ParameterError("--noise-kind asymmetric and --noise-matrix FILE go together: asymmetric noise draws "
                             "the wrong class from the matrix's row of the true class.")
    return read_noise_matrix(path) if path is not None else None


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--tsne", is_flag=True, help="2-D maps of embeddings with t-SNE instead of PCA.")
@one_line_errors
def plot(run_dir: str, tsne: bool) -> None:
    """Regenerate a run directory's figures and summaries from its store (no training)."""
    from fer_bench.tables import write_run_outputs
    from fer_bench.report import write_report
    click.echo(write_run_outputs(Path(run_dir), None, tsne=tsne))
    click.echo(f"report: {write_report(Path(run_dir))}")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--results", type=click.Path(), default="results", show_default=True,
              help="Results root folder (for a benchmark file).")
@one_line_errors
def report(path: str, results: str) -> None:
    """Write one self-contained report.html for a run directory or a benchmark file (no training)."""
    from fer_bench.report import write_report
    click.echo(f"report: {write_report(Path(path), results)}")


@main.command()
@click.argument("benchmark", type=click.Path())
@click.option("--no-run", is_flag=True, help="Only read the store: write the tables from finished cells.")
@click.option("--results", type=click.Path(), default="results", show_default=True, help="Results root folder.")
@click.option("--data-root", type=click.Path(), default=None, help="Folder of a downloaded dataset.")
@click.option("--device", default="auto", show_default=True)
@executor_options
@reuse_option
@click.option("--plugin", "plugins", multiple=True, type=click.Path(), help="A Python file that registers methods.")
@click.pass_context
@one_line_errors
def tables(ctx: click.Context, benchmark: str, no_run: bool, results: str, data_root: str | None, device: str,
           executor: str, reuse: tuple[str, ...], plugins: tuple[str, ...], **ray: Any) -> None:
    """Run a benchmark file's missing cells and write its tables (published | ours | delta)."""
    from fer_bench.runner import check_reuse_dirs
    from fer_bench.tables import load_benchmark, write_paper_tables

    _load_plugins(plugins)
    reuse_dirs = check_reuse_dirs(list(reuse))
    runner = make_executor(ctx, executor, plugins, **ray)

    def report(event, spec, result) -> None:
        status = event if result is None else (result.status if result.status == "done" else f"FAILED: {result.error}")
        click.echo(f"{spec.method} on {spec.dataset_label} seed {spec.seed}: {status}")
        if result is not None and result.status == "done":
            warn_at_floor(spec, result)

    try:
        written = write_paper_tables(benchmark, results, run=not no_run, data_root=data_root, device=device,
                                     on_event=report, executor=runner, reuse=reuse_dirs)
    except KeyboardInterrupt:
        from fer_bench.tables import tuned_grids
        from fer_bench.tuning import TRIALS_DIR
        spec = load_benchmark(benchmark)
        interrupted(Path(results) / spec["name"] / "run",             # and the searches' trials, if any
                    *(search / TRIALS_DIR for _, search in tuned_grids(spec, results)))
    for path in written:
        click.echo(f"wrote {path}")
    from fer_bench.report import write_report
    click.echo(f"report: {write_report(Path(benchmark), results)}")


@main.group()
def synth() -> None:
    """The embedded synthetic face dataset."""


@synth.command("export")
@click.option("--out", type=click.Path(), required=True, help="Output folder.")
@click.option("--n-per-class", default=20, show_default=True, help="Images per class and split.")
@click.option("--option", "options", default="", help="Dataset options, e.g. size=64,classes=7.")
@one_line_errors
def synth_export(out: str, n_per_class: int, options: str) -> None:
    """Write an ImageFolder tree of PNGs, a CSV of factors and a contact sheet."""
    from fer_bench.data import parse_dataset_spec
    from fer_bench.data.synthetic import export
    _, opts = parse_dataset_spec("synthetic:" + options)
    resolved = get_dataset("synthetic").resolve_options(opts)
    written = export(Path(out), n_per_class=n_per_class, **resolved)
    click.echo(f"wrote {written}")


from fer_bench.data.verify import datasets_group  # noqa: E402  (fer-bench datasets verify | card)

main.add_command(datasets_group)

if __name__ == "__main__":  # pragma: no cover
    main()
