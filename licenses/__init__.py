"""Licence notices of the model weights blspdata installs and runs (shipped as blspdata.licenses)."""
