"""Fixtures that build tiny base models and adapters with real transformers and PEFT."""
