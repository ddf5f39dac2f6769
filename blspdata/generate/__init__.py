"""Generation: prompt templates, engines, resumable output. See `run.generate`."""
