"""What a run of the model writes for training beside the data: the half fine-tuning plan
(`ftprep hft-plan`) and the instruction vector (`ftprep iv`), which ftprep.trainer reads."""
