"""ft-export: merge and export fine-tuned models, each export verified."""
