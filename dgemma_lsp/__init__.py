"""dgemma-lsp: fill-in-the-middle completions from a DiffusionGemma block-diffusion model."""

__version__ = "0.1.0"
