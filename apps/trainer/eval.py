"""Evaluate a checkpoint under ``accelerate launch`` (same as the ``seg-eval`` console script).

accelerate launch apps/trainer/eval.py --config CONFIG.yaml --checkpoint CKPT.pth
accelerate launch --multi_gpu --num_processes 2 apps/trainer/eval.py --cpu --checkpoint CKPT.pth
"""

from seg_trainer.evaluate import cli

if __name__ == "__main__":
    cli()
