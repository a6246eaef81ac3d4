"""ferpipe: the code the FER2013 pipeline stages share.

Modules, in the order data flows: `data` (archive -> raw folders -> prepared arrays -> stats),
`model` (ResNet18 and its checkpoint), `augment` (whole-batch augmentation on the device),
`training` (the one-cycle loop), `metrics` (scikit-learn scores), `tracking` (MLflow),
`plots` (matplotlib), and `params` (reading params.yaml).
"""
