"""Command line: `python main.py {fit,validate,test,predict} --config conf/<preset>.yaml`.

`fit --ckpt_path auto` resumes from the newest checkpoint of this run (a `ModelCheckpoint` last
checkpoint or Lightning's SLURM requeue checkpoint `hpc_ckpt_N.ckpt` in `default_root_dir`) and
starts fresh when there is none, so a first SLURM submission and its requeues run one command.
The CLI itself lives in `cli.py`, so other entry points (demo.py) reuse it without importing a script.
"""

import torch

from cli import cli_main

if __name__ == "__main__":
    cli_main()
    # Without this, gloo's threads can abort the process at interpreter exit after a finished
    # multi-process run ("terminate called without an active exception"), and SLURM marks it FAILED.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
