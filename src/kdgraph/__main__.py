"""``python -m kdgraph`` runs the CLI."""

from kdgraph.cli.main import main

if __name__ == "__main__":
    main()
