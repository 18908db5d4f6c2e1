"""``cass-deploy env``: versions, GPUs, Jetson board and which backends are usable."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cass_deploy.backends.envinfo import collect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    _print_tables(info)
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def _print_tables(info: dict) -> None:

    console = Console()
    system = Table(title="cass-deploy environment", show_header=False)
    system.add_column("item", style="bold")
    system.add_column("value")
    system.add_row("cass-deploy", info["cass_deploy"])
    system.add_row("python", escape(f"{info['python']} ({info['python_executable']})"))
    system.add_row("platform", escape(f"{info['platform']} [{info['machine']}]"))
    torch = info.get("torch") or {}
    if torch:
        system.add_row(
            "torch CUDA", f"build {_fmt(torch.get('cuda_build'))}, available: {torch.get('cuda_available', False)}"
        )
        if torch.get("gpus"):
            system.add_row("torch GPUs", _fmt(torch["gpus"]))
    ort = info.get("onnxruntime") or {}
    if ort:
        system.add_row("onnxruntime providers", escape(_fmt(ort.get("providers"))))
    for gpu in info.get("nvidia_smi") or []:
        system.add_row("nvidia-smi", escape(", ".join(f"{k}={v}" for k, v in gpu.items())))
    jetson = info.get("jetson") or {}
    if jetson.get("is_jetson"):
        mode = jetson.get("power_mode") or {}
        system.add_row(
            "Jetson",
            escape(
                f"{_fmt(jetson.get('model'))}; L4T {_fmt(jetson.get('l4t'))}; "
                f"JetPack {_fmt(jetson.get('jetpack'))}; power mode {_fmt(mode.get('name'))}"
            ),
        )
        if jetson.get("suggested_profile"):
            system.add_row("export profile", jetson["suggested_profile"])
    else:
        system.add_row("Jetson", "no (not an NVIDIA Jetson board)")
    console.print(system)

    packages = Table(title="packages")
    packages.add_column("package", style="bold")
    packages.add_column("version")
    for name, version in info["packages"].items():
        packages.add_row(name, version or "[dim]not installed[/dim]")
    console.print(packages)

    backends = Table(title="backends")
    backends.add_column("backend", style="bold")
    backends.add_column("usable")
    backends.add_column("reason")
    for name, row in info["backends"].items():
        backends.add_row(name, "[green]yes[/green]" if row["usable"] else "[red]no[/red]", escape(row["reason"]))
    console.print(backends)
