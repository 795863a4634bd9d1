"""Model loading, prompts and the block-diffusion denoiser (installed as ``dgemma_lsp.model``)."""
