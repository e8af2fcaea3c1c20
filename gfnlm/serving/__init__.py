"""Inference-engine plumbing: launching and supervising SGLang and vLLM servers and talking to them.

* :mod:`gfnlm.serving.serve`: launching and supervising an SGLang server (``gfnlm serve``);
* :mod:`gfnlm.serving.sglang_client`: the HTTP client of the server samplers (deadlines, retries)
  and SGLang's endpoints;
* :mod:`gfnlm.serving.vllm_serve` and :mod:`gfnlm.serving.vllm_client`: launching a vLLM server and
  its endpoints, for the ``vllm`` sampler.
"""
