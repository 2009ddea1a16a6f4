"""The side of the ``vllm`` backend that runs in vLLM's environment (``mmpost_vllm``): in the
vLLM venv as a server process (placement ``server``), or imported into the trainer's process
(placement ``colocate``). It imports no mmpost module, so it runs on vLLM's own torch and
transformers; the trainer's side is :mod:`vision_tools.generation.vllm`."""
