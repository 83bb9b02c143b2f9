from atlas.cli import run_cli

run_cli()
