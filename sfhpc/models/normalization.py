"""The input normalisation every sfhpc classifier applies to its [0, 1] pixels: ImageNet's channel statistics, for
every dataset (synthetic too), arch, band and predictor. Torch-free, so that the login node can read it (the attack
stage converts normalised epsilons with the SD at expand time)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
