"""Model mechanics beneath the components: loading a model folder and its tokenizer, the chunked
log-prob kernels, decoding with a KV cache, and weights as servers and exports need them."""
