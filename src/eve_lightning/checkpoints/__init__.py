"""Reading checkpoints safely: weights-only pickles, DeepSpeed folders without DeepSpeed, resume selection."""
