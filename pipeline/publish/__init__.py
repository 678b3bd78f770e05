"""Publishing an output: the dataset card and its image, Parquet files for the Hub (`ftprep push`) or a
local folder (`ftprep export`), and training snippets (`ftprep export-config`)."""
