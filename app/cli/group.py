"""CLI: ``mucode experiment group create|run|show``: the paper's whole comparison as one group.

A group NAME is the experiments ``NAME-mucode``, ``NAME-multi_rft``, ``NAME-rft`` and ``NAME-rft_lv``: the same
base model and frozen protocol (preset, config file), differing only in the method. Membership is that naming
(and each member's stored method), so no schema change is needed and every member stays an ordinary experiment
(``round run``, ``round status``, the dashboard). Only the first member also evaluates the base model G0 (the
"Instruct" rows): evaluating it once per member would repeat the same search four times.
``mucode report NAME`` reads the group's members.
"""

from __future__ import annotations

import typer

from app.cli.common import console, get_store, print_json

group_app = typer.Typer(help="Experiment groups: µCode and its baselines (multi-turn RFT, RFT, RFT with the "
                        "verifier) over the same rounds and evaluation settings.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    from app.cli.experiment import experiment_app

    experiment_app.add_typer(group_app, name="group")


def _members_or_fail(store, name: str):
    from app.errors import NotFound

    members = store.report_group_members(name)
    if not members:
        raise NotFound(f"no experiment group {name!r} (`mucode experiment group create {name} ...`)")
    return members


@group_app.command("create")
def group_create(
    name: str = typer.Argument(..., help="Group name: its experiments are NAME-mucode, NAME-multi_rft, ..."),
    base_model: str | None = typer.Option(None, "--base-model", help="Hub name, local folder or pulled name."),
    config_file: str | None = typer.Option(None, "--config", help="JSON/TOML/YAML with ExperimentConfig fields "
                                           "(applied over the preset), shared by every member."),
    preset: str = typer.Option("mucode", "--preset", help="The protocol every member starts from (as "
                               "`experiment create --preset`)."),
    methods: list[str] = typer.Option(
        None, "--method", help="Only these methods (repeat; default: mucode, multi_rft, rft, rft_lv)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create the group's experiments: one per method, every other setting the same. Then run each round of
    all of them with `mucode experiment group run NAME` (twice, then with --final, for the paper's G2 with RM2)
    and print Table 1 with `mucode report NAME`."""
    from pathlib import Path

    from app.errors import ConfigError
    from app.experiments import build_config, create_experiment, read_config_file
    from app.model_registry import resolve_model
    from app.presets import merge
    from app.store.report import GROUP_METHODS, group_member_name

    chosen = list(dict.fromkeys(methods)) if methods else list(GROUP_METHODS)
    bad = [x for x in chosen if x not in GROUP_METHODS]
    if bad:
        raise ConfigError(f"unknown method(s) {', '.join(bad)} (one of: {', '.join(GROUP_METHODS)})")
    chosen.sort(key=GROUP_METHODS.index)
    overrides = read_config_file(Path(config_file)) if config_file else {}
    # Build (and check) every member's config before creating any of them.
    configs = []
    for i, method in enumerate(chosen):
        over = overrides if i == 0 else merge(overrides, {"eval": {"baseline": False}})
        configs.append((group_member_name(name, method), build_config(method, base_model, over, preset)))
    resolve_model(configs[0][1].base_model)
    store = get_store()
    out = []
    for member, cfg in configs:
        eid, created = create_experiment(store, member, cfg)
        out.append({"name": member, "id": eid, "method": cfg.method, "created": created})
    if as_json:
        print_json({"group": name, "experiments": out})
        return
    for r in out:
        verb = "created" if r["created"] else "exists (same config)"
        console.print(f"experiment [bold]{r['name']}[/] {verb}: method {r['method']}", highlight=False)
    console.print(f"next: [bold]mucode experiment group run {name}[/] (each round), then "
                  f"[bold]mucode report {name}[/]", highlight=False)


@group_app.command("run")
def group_run(
    name: str = typer.Argument(..., help="The group."),
    final: bool = typer.Option(False, "--final", help="Each member's last round (as `round run --final`)."),
    wait: bool = typer.Option(False, "--wait", help="With a broker: follow each round to the end."),
) -> None:
    """`mucode round run` for every member of the group, in turn (embedded mode runs each to the end here;
    with a broker all rounds are queued). A member that fails does not stop the others; the command then
    exits 1."""
    from app.cli.experiment import run_round
    from app.experiments import create_round
    from workers.dispatch import check_broker

    check_broker()
    store = get_store()
    failed = []
    for exp in _members_or_fail(store, name):
        rid = create_round(store, exp.name, final=final)
        rnd = store.get_round(rid)
        console.print(f"{'final ' if final else ''}round {rnd.index} of [bold]{exp.name}[/] (id {rid})",
                      highlight=False)
        try:
            run_round(store, rid, wait=wait)
        except typer.Exit as exc:
            if exc.exit_code:
                failed.append(exp.name)
    if failed:
        console.print(f"[bold red]failed:[/] {', '.join(failed)} (`mucode round resume EXPERIMENT`)",
                      highlight=False)
        raise typer.Exit(1)


@group_app.command("show")
def group_show(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """The group's experiments with their rounds."""
    from app.display import print_experiments

    store = get_store()
    ids = {e.id for e in _members_or_fail(store, name)}
    rows = [r for r in store.list_experiments() if r["id"] in ids]
    if as_json:
        print_json(rows)
        return
    print_experiments(console, rows, name_column="experiment")
