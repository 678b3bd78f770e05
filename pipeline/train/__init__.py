"""Training on what ftprep writes, one module per way: token weights (`ftprep mask --strategy soft`),
the anchor KL loss (`--strategy anchor`), half fine-tuning (`ftprep hft-plan`) and IV guidance
(`ftprep iv`). Users import them from ftprep.trainer."""
