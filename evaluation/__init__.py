"""Evaluation of any model: greedy answers through a decoding backend (the tool loop for prompts
that declare tools) with answer extraction and matching (``evaluate``, ``answers``), SPECS'
Generalization Factor (``gf``), standard benchmarks with their own protocols (``benchmarks/``),
and the judges that score reasoning or extract answers with a model (``judge``)."""
