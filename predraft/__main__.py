from predraft.cli import run

run()
