"""The ``lensfinder`` command: one verb per pipeline stage, each a thin shell over a function.

Imports of the stages happen inside each verb so that ``lensfinder --help`` is instant.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from lensfinder import __version__
from lensfinder.config import (
    TABLE1_BUDGETS,
    BnStudyConfig,
    CutoutsConfig,
    DemoConfig,
    EvaluateConfig,
    GalleryConfig,
    GradingConfig,
    InjectConfig,
    InspectConfig,
    PackConfig,
    ScanConfig,
    SimulateConfig,
    TileSimulateConfig,
    TrainConfig,
)
from lensfinder.errors import LensfinderError

# Typer's command-line exceptions (Click's, which Typer may vendor): found from a public name.
_cli_errors = sys.modules[typer.BadParameter.__module__]


class _OneLineUsageErrors(TyperGroup):
    """Bad command-line values give one line (``error: ...``) and exit status 2, like every
    other user error, instead of a usage box."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **kwargs)
        except _cli_errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _cli_errors.ClickException as exc:
            hint = ""
            if isinstance(exc, _cli_errors.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            message = " ".join(exc.format_message().split())
            typer.secho(f"error: {message}{hint}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="lensfinder",
    cls=_OneLineUsageErrors,
    help="Find strong gravitational lenses in Euclid-like images with CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
reproduce_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")
grades_app = typer.Typer(
    help="The grades people gave in 'lensfinder inspect'.", no_args_is_help=True
)
app.add_typer(grades_app, name="grades")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn lensfinder's own errors into one plain line and exit status 2 (no traceback); the
    stages' reports (step headers, warnings) go to stderr, the verb prints its summary."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lensfinder.stages import show_reports

        show_reports()
        try:
            return func(*args, **kwargs)
        except LensfinderError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            _quiet_leftovers()
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is kept; re-run to resume", err=True)
            _quiet_leftovers()
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_leftovers() -> None:
    """After the one-line error, silence what a library's event loop says as it is torn down
    (zarr's writes on a full disk leave futures whose exception nobody retrieves: asyncio would
    print "Task was destroyed but it is pending!" and their tracebacks at exit)."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lensfinder {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """lensfinder: simulate, pack, train, evaluate, scan, gallery."""


def _output_dir(value: Path | None) -> Path | None:
    """Checked at parse time: an output directory that can be created and written."""
    from lensfinder.safety import check_output_dir

    if value is None:
        return value
    try:
        return check_output_dir(value)
    except LensfinderError as exc:
        raise typer.BadParameter(str(exc)) from None


def int_list(text: str, lowest: int = 1, highest: int | None = None) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``, each within ``[lowest, highest]``; BadParameter otherwise."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected comma-separated whole numbers, e.g. 1,2,4"
        ) from None
    wrong = [v for v in values if v < lowest or (highest is not None and v > highest)]
    if wrong:
        span = f"{lowest}..{highest}" if highest is not None else f">= {lowest}"
        raise typer.BadParameter(f"{text!r}: {wrong[0]} is outside {span}")
    return values


def _sizes(text: str | None) -> str | None:
    if text is not None:
        int_list(text)
    return text


def _rows(text: str | None) -> str | None:
    if text is not None:
        int_list(text, 1, 8)
    return text


def _devices(text: str | None) -> str | None:
    """Lightning's devices: a count, -1 (all), 'auto', or a list of device indices."""
    if text is None or text == "auto" or text == "-1":
        return text
    try:
        int_list(text, lowest=0 if "," in text else 1)
    except typer.BadParameter:
        raise typer.BadParameter(
            f"{text!r}: expected a count (4), device indices (0,1), -1 (all) or auto"
        ) from None
    return text


Models = Annotated[
    list[Path],
    typer.Option("--model", "-m", help="Run directory of a trained model; repeat for an ensemble."),
]
Data = Annotated[Path, typer.Option("--data", "-d", help="A packed store or a challenge layout.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory.", callback=_output_dir)]
Count = {"min": 1}  # typer.Option keywords of a count: at least 1
Share = {"min": 0.0, "max": 1.0}  # ... and of a fraction


def _budget(text: str) -> str:
    if text not in TABLE1_BUDGETS:
        raise typer.BadParameter(f"{text!r}: expected {' or '.join(TABLE1_BUDGETS)}")
    return text


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value}: must be > 0")
    return value


@dataclass(frozen=True)
class Settings:
    """A verb's config class and the config field each of its setting options sets."""

    cls: type
    fields: dict[str, str]  # option parameter name -> dotted config field ("predict.tta")


def _same(*names: str, **renamed: str) -> dict[str, str]:
    """``{option: field}``: options named as their field, then those named otherwise."""
    return {name: name for name in names} | renamed


# Every option that is a setting, and the config field it sets: ``--help`` shows that field's
# default (``_shown``), ``_load`` puts the typed value there, and tests/test_cli_defaults.py
# fails on an option missing here or showing another default. Options that are not settings
# (paths, --no-resume, --overwrite, ...) are listed in that test.
OPTION_FIELDS: dict[str, Settings] = {
    "simulate": Settings(
        SimulateConfig,
        _same(
            "n", "seed", "workers", "lens_fraction", "first_id", "lens_twin_fraction", "arc_maps"
        ),
    ),
    "inject": Settings(
        InjectConfig,
        _same(
            "paint_fraction", "min_snr", "seed", "workers", "first_id", "unpainted_twins",
            "field_stamps",
        ),
    ),
    "pack": Settings(PackConfig, _same("label_rule", "chunk", "workers")),
    "simulate-tile": Settings(
        TileSimulateConfig, _same("size", "seed", "lens_fraction", "workers")
    ),
    "cutouts": Settings(
        CutoutsConfig, _same("select", "id_column", "ra_column", "dec_column", "workers")
    ),
    "train": Settings(
        TrainConfig,
        _same(
            "max_epochs", "devices", "num_nodes", "members", "graded", "graded_data", "init",
            adapt="adapt.field", time_budget="time_budget_minutes",
        ),
    ),
    "evaluate": Settings(
        EvaluateConfig,
        _same(
            "split", "bootstrap",
            tta="predict.tta", batch_size="predict.batch_size",
            average="predict.ensemble_average",
        ),
    ),
    "bn-study": Settings(BnStudyConfig, _same("sizes", "split", "seed", "max_objects")),
    "scan": Settings(
        ScanConfig,
        _same(
            "workers", "shard_size", "local_below",
            backend="predict.backend", tta="predict.tta", batch_size="predict.batch_size",
            select="cutouts.select", id_column="cutouts.id_column",
            ra_column="cutouts.ra_column", dec_column="cutouts.dec_column",
        ),
    ),
    "gallery": Settings(
        GalleryConfig,
        _same(
            "top", "score_min", "score_max", "known_lenses",
            radius="radius_arcsec", view="colour.view",
        ),
    ),
    "inspect": Settings(
        InspectConfig,
        _same(
            "db", "host", "port", "grader", "sentinels",
            sentinel_rate="grading.sentinel_rate", view="colour.view",
        ),
    ),
    "grades export": Settings(GradingConfig, {}),
    "demo": Settings(DemoConfig, {}),
}  # fmt: skip


def default_text(value: Any) -> str:
    """A default as ``--help`` shows it: lists as typed (``1,2,4``), the rest as ``str``."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def field_default(cls: type, dotted: str) -> Any:
    """The default of a (nested) field of a config class: ``predict.batch_size``."""
    value: Any = cls()
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def _shown(verb: str, option: str) -> str:
    """An option's ``[default: ...]``: its config field's default (``OPTION_FIELDS``)."""
    settings = OPTION_FIELDS[verb]
    return default_text(field_default(settings.cls, settings.fields[option]))


def _load(verb: str, config: str | None, **flags: Any) -> Any:
    """The verb's config: class defaults, then the YAML file, then the flags the user typed.

    A flag left at None was not typed, so the file's value (or the default) stands; each flag
    goes to its field in ``OPTION_FIELDS`` (a flag missing there is a KeyError: a bug)."""
    from lensfinder.config import load_config

    settings = OPTION_FIELDS[verb]
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        *parents, leaf = settings.fields[name].split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return load_config(settings.cls, config, **overrides)


def _config_option(cls: type) -> Any:
    """The ``--config`` option of a verb whose settings are a ``cls``."""
    return typer.Option(help=f"YAML config file or shipped name ({cls.__name__}); flags win.")


@app.command()
@user_errors
def simulate(
    out: Out,
    n: Annotated[
        int | None,
        typer.Option(
            "--n", help="Number of cutouts.", show_default=_shown("simulate", "n"), **Count
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Random seed (same seed, same files).",
            show_default=_shown("simulate", "seed"),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes.", show_default=_shown("simulate", "workers"), **Count),
    ] = None,
    lens_fraction: Annotated[
        float | None,
        typer.Option(
            help="Fraction of lenses.",
            **Share,
            show_default=_shown("simulate", "lens_fraction"),
        ),
    ] = None,
    first_id: Annotated[
        int | None,
        typer.Option(
            help="ID of the first object.", min=0, show_default=_shown("simulate", "first_id")
        ),
    ] = None,
    lens_twin_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the non-lenses that are a lens's scene without its source.",
            **Share,
            show_default=_shown("simulate", "lens_twin_fraction"),
        ),
    ] = None,
    arc_maps: Annotated[
        bool,
        typer.Option(
            "--arc-maps",
            help="Also write each object's arc map (where its lensed source is), for training.",
        ),
    ] = False,
    config: Annotated[str | None, _config_option(SimulateConfig)] = None,
) -> None:
    """Simulate Euclid-like cutouts in the Lens Finding Challenge 2 layout."""
    from lensfinder.simulate import simulate as run

    cfg = _load(
        "simulate",
        config,
        n=n,
        seed=seed,
        workers=workers,
        lens_fraction=lens_fraction,
        first_id=first_id,
        lens_twin_fraction=lens_twin_fraction,
        arc_maps=arc_maps or None,  # not given: the config file's choice stands
    )
    result = run(cfg, out)
    typer.echo(result.summary())


@app.command()
@user_errors
def inject(
    field: Annotated[
        Path, typer.Argument(help="The survey's cutouts: a challenge layout or a packed store.")
    ],
    out: Out,
    paint_fraction: Annotated[
        float | None,
        typer.Option(
            help="Fraction of the field's cutouts to paint a lensed source on.",
            **Share,
            show_default=_shown("inject", "paint_fraction"),
        ),
    ] = None,
    min_snr: Annotated[
        float | None,
        typer.Option(
            help="Least VIS S/N of a galaxy that may be painted.",
            show_default=_shown("inject", "min_snr"),
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Random seed (same seed, same files).",
            show_default=_shown("inject", "seed"),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes.", show_default=_shown("inject", "workers"), **Count),
    ] = None,
    first_id: Annotated[
        int | None,
        typer.Option(help="Renumber outputs from this ID (default: keep the field's IDs).", min=0),
    ] = None,
    unpainted_twins: Annotated[
        bool | None,
        typer.Option(
            "--unpainted-twins/--no-unpainted-twins",
            help="Also write each painted galaxy untouched, as a non-lens under another ID.",
            show_default=_shown("inject", "unpainted_twins"),
        ),
    ] = None,
    field_stamps: Annotated[
        bool,
        typer.Option(
            "--field-stamps",
            help="Also draw sources' looks from the field's own blue galaxies.",
        ),
    ] = False,
    config: Annotated[str | None, _config_option(InjectConfig)] = None,
) -> None:
    """Paint simulated lensed sources onto a survey's own galaxies (challenge layout out)."""
    from lensfinder.simulate.inject import inject as run

    cfg = _load(
        "inject",
        config,
        paint_fraction=paint_fraction,
        min_snr=min_snr,
        seed=seed,
        workers=workers,
        first_id=first_id,
        unpainted_twins=unpainted_twins,
        field_stamps=field_stamps or None,  # not given: the config file's choice stands
    )
    result = run(field, out, cfg)
    typer.echo(result.summary())


@app.command()
@user_errors
def pack(
    layout: Annotated[Path, typer.Argument(help="Challenge layout directory.")],
    out: Out,
    label_rule: Annotated[
        str | None,
        typer.Option(
            help="is_lens rule, e.g. 'n_sources > 0 & mag_eff > 1.5' (default: the layout's)."
        ),
    ] = None,
    chunk: Annotated[
        int | None,
        typer.Option(
            help="Objects per store chunk.", show_default=_shown("pack", "chunk"), **Count
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="FITS reader processes.", show_default=_shown("pack", "workers"), **Count
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store that lensfinder packed (nothing else).")
    ] = False,
    config: Annotated[str | None, _config_option(PackConfig)] = None,
) -> None:
    """Pack a challenge layout into one chunked Zarr store for fast training and scanning."""
    from lensfinder.data.store import pack as run

    cfg = _load("pack", config, label_rule=label_rule, chunk=chunk, workers=workers)
    result = run(
        layout,
        out,
        label_rule=cfg.label_rule,
        chunk=cfg.chunk,
        workers=cfg.workers,
        overwrite=overwrite,
    )
    typer.echo(result.summary())


@app.command("simulate-tile")
@user_errors
def simulate_tile(
    out: Out,
    size: Annotated[
        int | None,
        typer.Option(
            help='Pixels per side (0.1"/px).',
            min=64,
            show_default=_shown("simulate-tile", "size"),
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Random seed.", min=0, show_default=_shown("simulate-tile", "seed")),
    ] = None,
    lens_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of galaxies drawn as lenses.",
            **Share,
            show_default=_shown("simulate-tile", "lens_fraction"),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes.", show_default=_shown("simulate-tile", "workers"), **Count
        ),
    ] = None,
    config: Annotated[str | None, _config_option(TileSimulateConfig)] = None,
) -> None:
    """Simulate a Euclid MER-like mosaic tile (VIS, Y, J, H), its catalogue and its truth."""
    from lensfinder.simulate.tile import simulate_tile as run

    cfg = _load(
        "simulate-tile",
        config,
        size=size,
        seed=seed,
        lens_fraction=lens_fraction,
        workers=workers,
    )
    typer.echo(run(cfg, out).summary())


@app.command()
@user_errors
def cutouts(
    tiles: Annotated[Path, typer.Option(help="Directory of MER mosaic tiles (any depth).")],
    catalog: Annotated[Path, typer.Option(help="Catalogue: FITS table, Parquet or CSV.")],
    out: Out,
    select: Annotated[
        str | None, typer.Option(help="Keep only rows passing e.g. 'FLUX_VIS_PSF > 10'.")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="Object ID column.", show_default=_shown("cutouts", "id_column")),
    ] = None,
    ra_column: Annotated[
        str | None,
        typer.Option(help="RA column (deg).", show_default=_shown("cutouts", "ra_column")),
    ] = None,
    dec_column: Annotated[
        str | None,
        typer.Option(help="Dec column (deg).", show_default=_shown("cutouts", "dec_column")),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Dask worker processes.", show_default=_shown("cutouts", "workers"), **Count
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store that lensfinder wrote (nothing else).")
    ] = False,
    config: Annotated[str | None, _config_option(CutoutsConfig)] = None,
) -> None:
    """Cut a catalogue's objects from mosaic tiles into a packed store (as pack writes)."""
    from lensfinder.data.tiles import cutouts as run

    cfg = _load(
        "cutouts",
        config,
        select=select,
        id_column=id_column,
        ra_column=ra_column,
        dec_column=dec_column,
        workers=workers,
    )
    typer.echo(run(tiles, catalog, out, cfg, overwrite=overwrite).summary())


# ``train``'s data options, declared apart to keep the verb short.
TrainingSets = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        "-d",
        help="A packed store or a challenge layout; repeat to train on several together "
        "(e.g. simulations and painted lenses).",
    ),
]
SurveyField = Annotated[
    Path | None,
    typer.Option(
        help="Your survey's unlabelled cutouts (store or layout; labels never read) to "
        "learn from; the config's adapt section says how (default: lenses painted on its "
        "galaxies).",
    ),
]


@app.command()
@user_errors
def train(
    out: Out,
    data: TrainingSets = None,
    config: Annotated[str, typer.Option(help="Config file or shipped name; flags win.")] = (
        "cpu-small"
    ),
    max_epochs: Annotated[
        int | None,
        typer.Option(
            help="Override max_epochs.", show_default=_shown("train", "max_epochs"), **Count
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Lightning devices (e.g. 4, 0,1 or auto).",
            callback=_devices,
            show_default=_shown("train", "devices"),
        ),
    ] = None,
    num_nodes: Annotated[
        int | None,
        typer.Option(
            help="Nodes for multi-node DDP.", show_default=_shown("train", "num_nodes"), **Count
        ),
    ] = None,
    members: Annotated[
        int | None,
        typer.Option(
            help="Train an ensemble of N members (seeds seed..seed+N-1, one split).",
            show_default=_shown("train", "members"),
            **Count,
        ),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            help="Minutes the whole run may take here: fewer epochs than max_epochs if "
            "needed, planned from a few timed steps (0: no budget) [default: the config's; "
            "cpu-best 30].",
            min=0,
        ),
    ] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start afresh.")] = False,
    graded: Annotated[
        Path | None,
        typer.Option(help="Grades export to learn from: X as non-lenses, A/B as lenses."),
    ] = None,
    graded_data: Annotated[
        Path | None,
        typer.Option(help="Data holding the graded IDs [default: DATA]."),
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Run directory to fine-tune instead of starting afresh.")
    ] = None,
    adapt: SurveyField = None,
) -> None:
    """Train a classifier on a packed store; writes model.safetensors + model.json to OUT
    (with --members N: OUT/member-0..N-1 and OUT/ensemble.json, used as one model).

    --init RUN --adapt FIELD --config adabn-only: no training, only RUN's batch-norm statistics
    recomputed on FIELD (minutes; an ensemble RUN is adapted member by member)."""
    from lensfinder.train.members import train_models as run

    paths = {"graded": graded, "graded_data": graded_data, "init": init, "adapt": adapt}
    cfg = _load(
        "train",
        config,
        max_epochs=max_epochs,
        time_budget=time_budget,
        devices=int(devices) if devices and devices.lstrip("-").isdigit() else devices,
        num_nodes=num_nodes,
        members=members,
        **{name: None if path is None else str(path) for name, path in paths.items()},
    )
    stores = list(data or [])
    result = run(cfg, stores[0] if len(stores) == 1 else stores, out, resume=not no_resume)
    typer.echo(result.summary())


@app.command()
@user_errors
def evaluate(
    model: Models,
    data: Data,
    out: Out,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Average over the 8 D4 transforms.",
            show_default=_shown("evaluate", "tta"),
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="auto (test split of the training data, every object of other data), test, "
            "val, train or all.",
            show_default=_shown("evaluate", "split"),
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Inference batch size.",
            show_default=_shown("evaluate", "batch_size"),
            **Count,
        ),
    ] = None,
    average: Annotated[
        str | None,
        typer.Option(
            help="Ensemble average: probability or logit.",
            show_default=_shown("evaluate", "average"),
        ),
    ] = None,
    bootstrap: Annotated[
        int | None,
        typer.Option(
            help="Bootstrap resamples for the AUROC CI (0: none).",
            min=0,
            show_default=_shown("evaluate", "bootstrap"),
        ),
    ] = None,
    config: Annotated[str | None, _config_option(EvaluateConfig)] = None,
) -> None:
    """Score a labelled set: metrics.json, ROC plots, histograms and an HTML report."""
    from lensfinder.evaluate import evaluate as run

    cfg = _load(
        "evaluate",
        config,
        tta=tta,
        batch_size=batch_size,
        average=average,
        split=split,
        bootstrap=bootstrap,
    )
    result = run(model, data, out, cfg)
    typer.echo(result.summary())


@app.command("bn-study")
@user_errors
def bn_study(
    model: Models,
    data: Data,
    out: Out,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated test batch sizes.",
            callback=_sizes,
            show_default=_shown("bn-study", "sizes"),
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="test, val, train or all.", show_default=_shown("bn-study", "split")),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the random batch orders.", show_default=_shown("bn-study", "seed")
        ),
    ] = None,
    max_objects: Annotated[
        int | None,
        typer.Option(
            help="Cap on objects studied.", show_default=_shown("bn-study", "max_objects"), **Count
        ),
    ] = None,
    config: Annotated[str | None, _config_option(BnStudyConfig)] = None,
) -> None:
    """AUROC against test batch size with BN in training mode (the paper's method 2)."""
    from lensfinder.experiments.bn_study import batchnorm_study

    cfg = _load(
        "bn-study",
        config,
        sizes=int_list(sizes) if sizes else None,
        split=split,
        seed=seed,
        max_objects=max_objects,
    )
    result = batchnorm_study(model, data, out, cfg)
    typer.echo(result.summary())


@reproduce_app.command("table1")
@user_errors
def reproduce_table1(
    out: Out,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="A packed store or a challenge layout (cpu: simulated if absent)."
        ),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="cpu (scaled down) or gpu (the paper's).", callback=_budget)
    ] = "cpu",
    rows: Annotated[
        str | None, typer.Option(help="Only these rows, e.g. 1,6,8.", callback=_rows)
    ] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Retrain every row.")] = False,
) -> None:
    """Train and evaluate the paper's Table I rows; our AUROC beside the paper's (md, CSV, PNG)."""
    from lensfinder.experiments.table1 import reproduce_table1 as run

    chosen = int_list(rows) if rows else None
    result = run(data, out, budget=budget, resume=not no_resume, rows=chosen)
    typer.echo(result.summary())


@app.command()
@user_errors
def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run or ensemble directory.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
) -> None:
    """Export a model (an ensemble as one averaging graph) to ONNX (dynamic batch), checked
    against torch to 1e-4."""
    from lensfinder.predict.export import export_onnx

    result = export_onnx(model, onnx)
    typer.echo(result.summary())


# ``scan``'s input options (a store or layout, or tiles and their catalogue), declared apart to
# keep the verb short.
ScanData = Annotated[
    Path | None,
    typer.Option("--data", "-d", help="A packed store or a challenge layout (or --tiles)."),
]
ScanTiles = Annotated[
    Path | None,
    typer.Option(help="Scan straight from this directory of MER mosaic tiles (--catalog)."),
]
ScanCatalog = Annotated[
    Path | None, typer.Option(help="With --tiles: the catalogue (FITS table, Parquet, CSV).")
]
ScanSelect = Annotated[
    str | None, typer.Option(help="With --tiles: keep rows passing e.g. 'FLUX_VIS_PSF > 10'.")
]
ScanIdColumn = Annotated[
    str | None,
    typer.Option(help="With --tiles: object ID column.", show_default=_shown("scan", "id_column")),
]
ScanRaColumn = Annotated[
    str | None,
    typer.Option(help="With --tiles: RA column (deg).", show_default=_shown("scan", "ra_column")),
]
ScanDecColumn = Annotated[
    str | None,
    typer.Option(help="With --tiles: Dec column (deg).", show_default=_shown("scan", "dec_column")),
]

ScanLocalBelow = Annotated[
    int | None,
    typer.Option(
        help="Without --scheduler: fewer cutouts than this are scored in this process, no "
        "cluster started (0: always a cluster).",
        min=0,
        show_default=_shown("scan", "local_below"),
    ),
]


@app.command()
@user_errors
def scan(
    model: Models,
    out: Out,
    data: ScanData = None,
    tiles: ScanTiles = None,
    catalog: ScanCatalog = None,
    select: ScanSelect = None,
    id_column: ScanIdColumn = None,
    ra_column: ScanRaColumn = None,
    dec_column: ScanDecColumn = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Local Dask workers (no --scheduler).",
            show_default=_shown("scan", "workers"),
            **Count,
        ),
    ] = None,
    local_below: ScanLocalBelow = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="torch, onnx or onnx-int8 (ONNX quantised to int8, calibrated on the data: "
            "about 2x faster, scores move a little).",
            show_default=_shown("scan", "backend"),
        ),
    ] = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Average over the 8 D4 transforms.",
            show_default=_shown("scan", "tta"),
        ),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            help="Cutouts per shard (default: from the data size and the workers).",
            show_default=False,
            **Count,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Inference batch size.",
            show_default=_shown("scan", "batch_size"),
            **Count,
        ),
    ] = None,
    config: Annotated[str | None, _config_option(ScanConfig)] = None,
) -> None:
    """Score many cutouts on Dask, one Parquet file per shard, resumable; merged catalogue.
    With --tiles and --catalog, each shard cuts its objects from one tile itself (no store)."""
    from lensfinder.scan import scan as run

    cfg = _load(
        "scan",
        config,
        tta=tta,
        backend=backend,
        batch_size=batch_size,
        shard_size=shard_size,
        workers=workers,
        local_below=local_below,
        select=select,
        id_column=id_column,
        ra_column=ra_column,
        dec_column=dec_column,
    )
    source = _scan_input(data, tiles, catalog)
    result = run(model, source, out, cfg, scheduler=scheduler, catalog=catalog)
    typer.echo(result.summary())


def _scan_input(data: Path | None, tiles: Path | None, catalog: Path | None) -> Path:
    """What ``scan`` reads: ``--data``, or ``--tiles`` with ``--catalog``; one line otherwise."""
    from lensfinder.errors import ConfigError

    if (data is None) == (tiles is None):
        raise ConfigError("scan reads either --data (a store or layout) or --tiles with --catalog")
    if tiles is not None and catalog is None:
        raise ConfigError(f"--tiles {tiles}: give the catalogue of its objects with --catalog")
    if data is not None and catalog is not None:
        raise ConfigError("--catalog goes with --tiles; --data needs none")
    return tiles if tiles is not None else data  # type: ignore[return-value]


@app.command()
@user_errors
def gallery(
    candidates: Annotated[Path, typer.Argument(help="Scan output directory or catalogue.")],
    data: Data,
    out: Out,
    top: Annotated[
        int | None,
        typer.Option(
            help="How many top candidates.", show_default=_shown("gallery", "top"), **Count
        ),
    ] = None,
    score_min: Annotated[float | None, typer.Option(help="Lowest score to show.", **Share)] = None,
    score_max: Annotated[float | None, typer.Option(help="Highest score to show.", **Share)] = None,
    known_lenses: Annotated[
        str | None,
        typer.Option(help="Flag known lenses: a catalogue file, or 'lenscat'."),
    ] = None,
    radius: Annotated[
        float | None,
        typer.Option(
            help="Match radius for known lenses, arcsec.",
            callback=_positive,
            show_default=_shown("gallery", "radius"),
        ),
    ] = None,
    view: Annotated[
        str | None,
        typer.Option(
            help="Colour view: vis-nisp, asinh, mtf or vis.", show_default=_shown("gallery", "view")
        ),
    ] = None,
    config: Annotated[str | None, _config_option(GalleryConfig)] = None,
) -> None:
    """HTML page and PNG mosaic of candidates as colour composites."""
    from lensfinder.scan.gallery import make_gallery

    cfg = _load(
        "gallery",
        config,
        top=top,
        score_min=score_min,
        score_max=score_max,
        known_lenses=known_lenses,
        radius=radius,
        view=view,
    )
    result = make_gallery(candidates, data, out, cfg)
    typer.echo(result.summary())


@app.command()
@user_errors
def inspect(
    scan_dir: Annotated[Path, typer.Argument(help="Scan output directory or catalogue.")],
    data: Data,
    db: Annotated[
        str | None,
        typer.Option(
            help="Grades database: a file or SQLAlchemy URL [default: SCAN_DIR/grades.sqlite]."
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind; not localhost needs --token.",
            show_default=_shown("inspect", "host"),
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, show_default=_shown("inspect", "port")),
    ] = None,
    grader: Annotated[
        str | None,
        typer.Option(help="Default grader name.", show_default=_shown("inspect", "grader")),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Shared secret every request must carry.", envvar="LENSFINDER_TOKEN"),
    ] = None,
    sentinels: Annotated[
        str | None,
        typer.Option(
            help="Labelled layout or store of known lenses and non-lenses, mixed hidden into "
            "the grading queue (e.g. one 'lensfinder inject' painted on this field)."
        ),
    ] = None,
    sentinel_rate: Annotated[
        float | None,
        typer.Option(
            help="Share of the queue that is sentinels.",
            **Share,
            show_default=_shown("inspect", "sentinel_rate"),
        ),
    ] = None,
    view: Annotated[
        str | None,
        typer.Option(
            help="Colour view shown first: vis-nisp, asinh, mtf or vis.",
            show_default=_shown("inspect", "view"),
        ),
    ] = None,
    lead_token: Annotated[
        str | None,
        typer.Option(
            help="Secret of the team lead: the team page (/team) needs it.",
            envvar="LENSFINDER_LEAD_TOKEN",
        ),
    ] = None,
    config: Annotated[str | None, _config_option(InspectConfig)] = None,
) -> None:
    """Grade candidates in the browser (A/B/C/X with the keyboard); grades go to a database."""
    from lensfinder.inspection.app import open_server

    cfg = _load(
        "inspect",
        config,
        db=db,
        host=host,
        port=port,
        grader=grader,
        sentinels=sentinels,
        sentinel_rate=sentinel_rate,
        view=view,
    )
    server = open_server(scan_dir, data, cfg, token, lead_token)
    typer.echo(server.summary())
    server.serve()


@grades_app.command("export")
@user_errors
def grades_export(
    db: Annotated[
        str,
        typer.Argument(
            help="Grades database: a scan directory (its grades.sqlite), a file, or a "
            "SQLAlchemy URL."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="grades.csv or grades.parquet.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUT file.")
    ] = False,
    scan: Annotated[
        Path | None,
        typer.Option(
            help="The scan whose scores are the posterior's prior [default: the database's "
            "directory, if a scan; else the prior base rate]."
        ),
    ] = None,
    config: Annotated[str | None, _config_option(GradingConfig)] = None,
) -> None:
    """One row per graded candidate: consensus and mean grade, class, graders, agreement,
    posterior lens probability, notes."""
    from lensfinder.inspection.export import export_with_scores

    cfg = _load("grades export", config)
    export = export_with_scores(db, out, cfg, scan, overwrite)
    typer.echo(export.summary())


@app.command()
@user_errors
def demo(
    out: Out = Path("demo-output"),
    quick: Annotated[bool, typer.Option(help="A tiny run (for tests).")] = False,
    config: Annotated[str | None, _config_option(DemoConfig)] = None,
) -> None:
    """Run the whole pipeline on fresh simulations: simulate, train, evaluate, scan, gallery."""
    from lensfinder.demo import run_demo

    cfg = _load("demo", config) if config is not None else None
    result = run_demo(out, quick=quick, config=cfg)
    typer.echo(result.summary())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
