"""Looking at an output: one row's tokens (`ftprep inspect`), its numbers (`ftprep stats`) and the
HTML page (`ftprep report`)."""
