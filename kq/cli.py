"""Entry point of the ``kq`` console script.

User mistakes (:class:`engine.errors.KQError`) print one line, ``kq: error: ...``, on stderr and
exit with the error's code (2 for bad input, 1 for blocking integrity problems): never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from engine.errors import KQError, one_line

try:  # typer >= 0.29 ships its own copy of click; its usage errors are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    # the fallback binds the other (same-named) class to the import's name, which mypy refuses
    _TyperClickException = click.exceptions.ClickException  # type: ignore[misc,assignment]

_CLICK_ERRORS = (click.exceptions.ClickException, _TyperClickException)

# Modules that add commands to the root app through ``register(app)``; one per area.
COMMAND_MODULES = (
    "kq.data",
    "kq.features",
    "kq.backtest",
    "kq.sim",
    "kq.research",
    "kq.models",
    "kq.live",
    "kq.replay",
    "kq.parity",
    "kq.doctor",
    "kq.sweep",
    "kq.study",
    "kq.serve",
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="kq",
        help="krakenquant: governed quantitative trading for Kraken spot (long-only, hourly bars).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    _register_config(app)
    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # that area has no commands yet
                continue
            raise
        m.register(app)
    return app


def _register_config(app: typer.Typer) -> None:
    cfg = typer.Typer(help="Validate and show configuration files.", no_args_is_help=True)

    def _load(path: str):
        """(engine Config, ResearchConfig or None): a file with a [research] table (configs/ci.toml,
        configs/research.toml) is validated by the walk-forward's loader, research keys included."""
        from engine.config import config_from_dict, read_toml

        raw = read_toml(path)
        if "research" in raw:
            from research.config import load_research_config

            return load_research_config(path)
        return config_from_dict(raw, path), None

    @cfg.command("check")
    def check(path: str = typer.Argument("configs/default.toml", help="TOML config file")) -> None:
        """Validate a config file; exit 2 with the offending key if it is invalid."""
        c, rc = _load(path)
        typer.echo(f"{path}: ok (sha256 {c.content_hash()[:16]}{'; [research] ok' if rc is not None else ''})")

    @cfg.command("show")
    def show(path: str = typer.Argument("configs/default.toml", help="TOML config file")) -> None:
        """Print the fully resolved config (defaults filled in) as JSON."""
        import json

        c, rc = _load(path)
        out = c.model_dump(mode="json")
        if rc is not None:
            from research.config import research_to_json

            out["research"] = research_to_json(rc)
        typer.echo(json.dumps(out, indent=2, allow_nan=False))

    app.add_typer(cfg, name="config")


def main(argv: list[str] | None = None) -> int:
    app = build_app()
    try:
        rv = app(args=argv, prog_name="kq", standalone_mode=False)
    except KQError as e:
        print(f"kq: error: {one_line(str(e))}", file=sys.stderr)  # one line, control characters escaped
        return e.exit_code
    except click.exceptions.Abort:
        print("kq: aborted", file=sys.stderr)
        return 130
    except _CLICK_ERRORS as e:  # usage errors: bad option, missing argument, bad value
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        print("kq: interrupted", file=sys.stderr)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
