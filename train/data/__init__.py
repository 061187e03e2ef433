"""Training data: image-text shards (stage 1), instruction/dialogue JSONL (stage 2), converters."""
