"""ferpipe: the code the FER2013 pipeline's stages (`stages/`) and commands share.

Sub-packages by layer, lowest last; a layer imports only the layers below it, and siblings on one
line do not import each other (import-linter checks this: `lint-imports`, pyproject.toml):

- `tools`: the benchmark (`ferpipe-bench`), the GPU check and the release builder.
- `serve`: the MLflow pyfunc model, the registry, a served-model folder.
- `train` | `evaluate` | `predict`: the training recipe and loop; scores and plots; the
  `ferpipe-predict` command (faces, crops, videos).
- `data` | `model`: the source archive to prepared uint8 arrays; the network, its checkpoint,
  device and precision, batched inference with TTA and logit adjustment, ONNX export.
- `core`: errors, params, outputs, the files stages hand each other, file helpers, MLflow.

Every `__init__.py` holds no code, so each stage's DVC dependencies are its modules' files.
"""
