"""Offline dataset package: raw ImageNet (folders, tar of class tars, val + labels, 21k) and the
official CIFAR archives to class-shuffled WebDataset shards with DALI index files, a manifest and
verification.

Entry point: ``python -m shards {build,merge,verify,inspect}`` (also ``cutmix-shards``).
"""
