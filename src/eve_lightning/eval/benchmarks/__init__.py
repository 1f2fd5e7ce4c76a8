"""One module per benchmark family: loaders of the public release files and scorers (see ``eval.registry``)."""
