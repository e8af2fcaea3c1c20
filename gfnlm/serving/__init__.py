"""What runs next to training or after it: inference servers and exported models.

* :mod:`gfnlm.serving.serve`: launching and supervising an SGLang server (``gfnlm serve``);
* :mod:`gfnlm.serving.sglang_client`: the HTTP client the ``sglang`` sampler uses;
* :mod:`gfnlm.serving.export`: a checkpoint out as a PEFT adapter or a merged Hugging Face folder.
"""
