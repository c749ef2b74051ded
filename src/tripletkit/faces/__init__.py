"""Faces: verification, identification and clustering with the triplet loss.

Data: :mod:`.images` (a folder per person, ORL built in), :mod:`.photos` (photos of any size),
:mod:`.align` (dlib's detector, landmarks and aligned chips), :mod:`.chips` (chips of a dataset,
cached), :mod:`.detect` and :mod:`.datasets` (the images of a run). Models: :mod:`.cnn` (the
from-scratch CNN), :mod:`.dlib_resnet` (dlib's ResNet in PyTorch), :mod:`.pretrained` (its
weights from the registry package), :mod:`.models` (model folders, thresholds, the commands'
face model). Runs: :mod:`.config`, :mod:`.runs` (folds and the run record), :mod:`.scratch`,
:mod:`.finetune` and :mod:`.dlib_run` (training), :mod:`.experiment` (train and evaluate a
run), :mod:`.evaluation`, :mod:`.metrics` and :mod:`.bootstrap` (scores and intervals),
:mod:`.report` and :mod:`.dlib_report`.

The package imports nothing from :mod:`tripletkit.search`, and the core nothing from it.
"""
