"""Models: timm architectures as one-logit lens classifiers, offline pretrained weights, the
paper's batch-norm methods, and safe model files (safetensors + JSON, never pickles).

Import from the modules (``models.factory.create_model``, ``models.checkpoint.load_model``,
``models.meta.read_meta``): this package imports nothing itself, so reading a model's JSON
(``meta``) or its batch-norm helpers does not load timm (~2 s of an ONNX scan's start-up).
"""
