"""Interoperability with Hugging Face checkpoints: Llama-family `config.json` + safetensors, load and export."""
