"""One module per CLI subcommand (see ``prom3e.cli``)."""
