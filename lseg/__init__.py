"""lseg-hpc: LSeg training at scale."""
