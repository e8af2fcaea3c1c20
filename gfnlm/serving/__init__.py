"""What runs next to training or after it: inference servers and exported models.

* :mod:`gfnlm.serving.serve`: launching and supervising an SGLang server (``gfnlm serve``);
* :mod:`gfnlm.serving.sglang_client`: the HTTP client of the server samplers (deadlines, retries)
  and SGLang's endpoints;
* :mod:`gfnlm.serving.vllm_serve` and :mod:`gfnlm.serving.vllm_client`: launching a vLLM server and
  its endpoints, for the ``vllm`` sampler;
* :mod:`gfnlm.serving.export`: a checkpoint out as a PEFT adapter or a merged Hugging Face folder.
"""
