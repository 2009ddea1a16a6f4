"""Visual tools called during reasoning (ViRC).

What will live here: the built-in tools ``crop_image``, ``scale_image`` and ``display_image``
plus user tools (typed functions whose JSON schema comes from the signature), the turn
protocol parser/validator with stable violation codes, the multi-turn
generate -> call -> insert-image engine, and the HTTP tool-call API. Builds on ``mm``.
"""
