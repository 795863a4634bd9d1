"""Triton kernels for the denoiser step (installed as ``dgemma_lsp.kernels``); filled by a later issue."""
