"""ferpipe: the code the FER2013 pipeline's stages (`stages/`) and commands share.

Modules, in the order data flows:
- `params`: the params.yaml schema, typed sections, the only place values are validated.
- `errors`: the project's errors and `run_main`, which reports them as one line each.
- `outputs`: where stages may write, and writing all outputs or none (folders swapped in).
- `data`: class names, prepared split files (.npz), the val carve-out, pixel stats, JSON files.
- `classes`: class and split folder names as spelled in the wild, mapped to canonical ones.
- `fetch`: getting the source (local copy, Kaggle, http with sha256) for the download stage.
- `sources`: reading zip/tar/folder/CSV sources safely and writing data/raw/images.zip.
- `decode`: decoding the images of data/raw/images.zip for the prepare stage.
- `quality`: duplicates, train/test leakage and blank images.
- `model`: the ResNet18 and its self-describing checkpoint.
- `augment`: whole-batch augmentation on the device.
- `device`: device and AMP choice, and the step context.
- `distributed`: torchrun process group, sharding and reductions.
- `resume`: the resume checkpoint and its fingerprint.
- `training`: the recipe: optimizer, one-cycle schedule, loss, epoch loop, validation, `fit`.
- `inference`: the one batched inference path, TTA, and `Classifier`.
- `metrics`: scikit-learn scores.
- `tracking`: MLflow runs and the store at the repo root.
- `plots`: matplotlib figures.
- `faces`: finding faces in a photo (OpenCV's Haar cascade, two passes) and cropping them.
- `predictor`: reading a photo, the classifier behind `--model`, and `Predictor` (detect, crop,
  classify).
- `drawing`: boxes and labels drawn on photos and frames.
- `video`: videos and webcams, frame by frame, and their CSV rows.
- `predict`: the `ferpipe-predict` command (its options, output and exit status).
- `serving`: the MLflow pyfunc model, the model registry, and a served-model folder without a
  store (`python -m ferpipe.serve.pyfunc`).
- `export`: the ONNX export, its check against PyTorch, and the onnxruntime classifier.
- `release`: the released model shipped in `ferpipe/released/` (fp16-stored ONNX) and its record.
- `bench`: the `ferpipe-bench` command (training speed side by side, profile, predict latency).
- `gpucheck`: `python -m ferpipe.tools.gpucheck`, the offline GPU check (speed, syncs, a short run).
- `codedeps`: which package modules a script imports (dvc.yaml deps, resume fingerprint).
"""
