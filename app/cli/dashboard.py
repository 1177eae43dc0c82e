"""CLI: mucode dashboard - runs the Streamlit app in dashboard/home.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

APP_PATH = Path(__file__).resolve().parents[2] / "dashboard" / "home.py"


def dashboard_command(port: int, address: str, headless: bool = True) -> list[str]:
    """The ``python -m streamlit run dashboard/home.py`` command line."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true" if headless else "false",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal",
    ]


def register(root: typer.Typer) -> None:
    @root.command("dashboard")
    def dashboard(
        port: int = typer.Option(8501, "--port", help="Port to serve on."),
        address: str = typer.Option("127.0.0.1", "--address", help="Address to bind (0.0.0.0 for all)."),
        database_url: str | None = typer.Option(
            None, "--database-url", help="Store to show (default: MUCODE_DATABASE_URL / settings)."
        ),
        headless: bool = typer.Option(True, "--headless/--open-browser", help="Do not open a browser."),
    ) -> None:
        """Serve the Streamlit dashboard: rounds, trajectories, failures and verifier rankings."""
        from app.config import get_settings
        from app.db.engine import redact
        from app.errors import MucodeError

        if not APP_PATH.is_file():
            raise MucodeError(f"the dashboard app is missing: {APP_PATH}")
        import importlib.util

        if importlib.util.find_spec("streamlit") is None:
            raise MucodeError("streamlit is not installed: pip install 'mucode[dashboard]'")
        settings = get_settings()
        env = dict(os.environ)
        url = database_url or settings.database_url
        env["MUCODE_DATABASE_URL"] = url
        root_dir = str(APP_PATH.parents[1])
        env["PYTHONPATH"] = root_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
        typer.echo(f"mucode dashboard on http://{address}:{port} (database {redact(url)})", err=True)
        cmd = dashboard_command(port, address, headless)
        if os.name == "posix":  # become the server: signals (Ctrl-C, SIGTERM) reach Streamlit directly
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(cmd[0], cmd, env)  # noqa: S606 - replaces this process with streamlit, as `exec` does
        proc = subprocess.Popen(cmd, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        raise typer.Exit(code)
