"""Train under ``accelerate launch`` (same as the ``seg-train`` console script).

accelerate launch apps/trainer/train.py --config apps/trainer/configs/cityscapes/pspnet_r101-deep_769x769_40k.yaml
accelerate launch --multi_gpu --num_processes 2 apps/trainer/train.py --cpu --config CONFIG.yaml
python apps/trainer/train.py --config CONFIG.yaml --cpu --set train.max_iters=100 --resume auto
"""

from seg_trainer.train import cli

if __name__ == "__main__":
    cli()
