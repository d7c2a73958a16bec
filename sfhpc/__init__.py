"""sfhpc: brain-alignment and adversarial-robustness sweeps on SLURM clusters.

Login-node modules (cli, config, sweep, launch, status, results, aggregate) never import torch; stage modules
under sfhpc.stages do, on the node.
"""
