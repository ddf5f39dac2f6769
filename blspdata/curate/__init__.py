"""Curation: quality filters with reasons, exact and near-duplicate removal. See `run.curate`."""
